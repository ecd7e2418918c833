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
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..length_config import LengthConfig
from ..options import option_field, option_names, option_type
from ..pipeline import QuestionAnswerer

ASSETS = {  # file name -> media type; nothing else under static/ is served
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "examples.json": "application/json",
}
MAX_CONTEXT_CHARS = 20_000  # /explain runs every window alone and keeps a trace: a longer context is refused


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is an error, not silently ignored


class QuestionContext(Strict):
    question: str
    context: str


def parameter(name: str) -> tuple:
    """An `AnswerOptions` field as an optional request parameter (a length config travels as its text)."""
    kind = str if name == "length_config" else option_type(name)
    return kind | None, Field(None, description=option_field(name).metadata["help"])


# The options of `POST /`'s parameters, so that the page sends one body to both endpoints.
ExplainParameters = create_model(
    "ExplainParameters", __base__=Strict, **{name: parameter(name) for name in option_names(per_request_only=True)}
)


class ExplainRequest(Strict):
    inputs: QuestionContext
    parameters: ExplainParameters = ExplainParameters()


class ExplainResponse(BaseModel):
    answers: list[dict] = Field(description="the answers, best first, as `POST /` gives them")
    length_config: str = Field(description="the length configuration that ran")
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


def router(qa: QuestionAnswerer, max_context_chars: int = MAX_CONTEXT_CHARS) -> APIRouter:
    """The page, its assets and `POST /explain`, answering with `qa`."""
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

    @routes.post("/explain", response_model=ExplainResponse)
    def explain(request: ExplainRequest, response: Response) -> dict:
        """Answer one question and say which tokens each layer kept, in the window of the best answer."""
        if len(request.inputs.context) > max_context_chars:
            raise HTTPException(
                422, f"inputs.context has {len(request.inputs.context)} characters; /explain takes {max_context_chars}"
            )
        options = request.parameters.model_dump(exclude_none=True)
        try:
            if "length_config" in options:
                options["length_config"] = LengthConfig.parse(options["length_config"])
            with one_at_a_time:
                explained = qa.explain(request.inputs.question, request.inputs.context, **options)
        except ValueError as e:  # so are BudgetError and LengthConfigError
            raise HTTPException(422, str(e)) from None
        response.headers["X-Length-Config"] = str(explained.length_config)
        return explained.to_dict()

    return routes
