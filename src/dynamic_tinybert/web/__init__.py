"""The web page of `dtb serve`: ask, see the answer in its text, move the budget, watch what each layer keeps.

`router(qa)` serves the page at `GET /`, its assets under `/static/` (shipped with the package: no CDN, it
works offline) and `POST /explain`, which answers one question with the model's trace (`explain.py`) and
says which tokens each layer kept. The page itself asks through the service's `POST /` and reads the
frontier from `GET /info`; plain HTML, CSS and JavaScript, no framework.
"""

from __future__ import annotations

import threading
from importlib import resources

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..length_config import LengthConfig
from ..pipeline import QuestionAnswerer
from ..serving.schema import Parameters, QuestionContext, Strict, error_responses
from ..serving.settings import ServerSettings

ASSETS = {  # file name -> media type; nothing else under static/ is served
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "examples.json": "application/json",
}
# what the service's request guard (body size, read time, content type) and the checks below may answer
EXPLAIN_ERRORS = error_responses(400, 408, 413, 415, 422, 499)


class ExplainRequest(Strict):
    """The body of `POST /` for one question: the page sends the same body to both."""

    inputs: QuestionContext
    parameters: Parameters = Parameters()


class ExplainResponse(BaseModel):
    answers: list[dict] = Field(description="the answers, best first, as `POST /` gives them")
    length_config: str = Field(description="the length configuration that ran, or `full`")
    macs_ratio: float = Field(description="the described window's MACs over the full model's on it")
    window: int = Field(description="which of the context's windows is described: the one of the best answer")
    windows: int = Field(description="how many windows the context was split into")
    tokens: list[str] = Field(description="the window's tokens: [CLS] question [SEP] context [SEP]")
    segments: list[int | None] = Field(description="per token: 0 question, 1 context, null a special token")
    offsets: list[list[int]] = Field(description="per token: [start, end) characters of the question or context")
    kept: list[list[int]] = Field(description="per layer: the token positions it kept")
    answer_tokens: list[int] = Field(description="the positions of the best answer's tokens in this window")


def asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def router(qa: QuestionAnswerer, settings: ServerSettings | None = None) -> APIRouter:
    """The page, its assets and `POST /explain`, answering with `qa` within the limits of `settings`."""
    settings = settings or ServerSettings()
    routes = APIRouter()
    page = asset("index.html")
    assets = {name: asset(name) for name in ASSETS}
    one_at_a_time = threading.Lock()
    no_cache = {"Cache-Control": "no-cache"}  # a server upgraded under an open page serves it its new assets

    @routes.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=no_cache)

    @routes.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no asset {name!r}")
        return Response(assets[name], media_type=ASSETS[name], headers=no_cache)

    @routes.post("/explain", response_model=ExplainResponse, responses=EXPLAIN_ERRORS)
    def explain(request: ExplainRequest, response: Response) -> dict:
        """Answer one question and say which tokens each layer kept, in the window of the best answer.

        Each window runs alone with the model's trace, outside the batching loop, one request at a time."""
        for field, limit, flag in (
            ("question", settings.max_question_chars, "--max-question-chars"),
            ("context", settings.max_context_chars, "--max-context-chars"),
        ):
            length = len(getattr(request.inputs, field))
            if length > limit:
                raise HTTPException(422, f"inputs.{field}: {length} characters, over the limit of {limit} ({flag})")
        options = request.parameters.model_dump(exclude_none=True)
        if options.get("top_k", 1) > settings.max_top_k:
            raise HTTPException(422, f"parameters.top_k: {options['top_k']}, over the limit of {settings.max_top_k}")
        try:
            if "length_config" in options:
                options["length_config"] = LengthConfig.parse(options["length_config"])
            with one_at_a_time:
                explained = qa.explain(request.inputs.question, request.inputs.context, **options)
        except ValueError as e:  # so are BudgetError and LengthConfigError
            raise HTTPException(422, str(e)) from None
        body = explained.to_dict()
        response.headers["X-Length-Config"] = body["length_config"]
        return body

    return routes
