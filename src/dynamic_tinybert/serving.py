"""The question-answering API over HTTP, shaped like Hugging Face's hosted inference for the task.

`POST /` (also `/answer`) takes `{"inputs": {"question": ..., "context": ...}, "parameters": {...}}` and
answers as the transformers question-answering pipeline behind that API does: `{"answer", "score",
"start", "end"}`, a list of those when `top_k` > 1, and a list of results for a list of inputs. The
parameters are the pipeline's plus this project's choice of length: `budget` (a fraction of the full
model's MACs), `latency_ms` or `length_config` ("0.9,0.8,0.7,0.6,0.5,0.4+q"), per request.
`GET /health` says the model is loaded; `GET /info` describes it and its accuracy/cost frontier.

Requests are answered one at a time: each already uses every core the process was given, and running
two at once would only make both slower and their latencies unpredictable (what a `latency_ms` budget
promises was measured one at a time).
"""

from __future__ import annotations

import threading

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, create_model

from .length_config import LengthConfig
from .options import option_field, option_names, option_type
from .pipeline import QuestionAnswerer


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is an error, not silently ignored


class QuestionContext(Strict):
    question: str
    context: str


def request_field(name: str) -> tuple:
    """An `AnswerOptions` field as an optional request parameter (a length config travels as its text)."""
    kind = str if name == "length_config" else option_type(name)
    return kind | None, Field(None, description=option_field(name).metadata["help"])


# Per-request options, derived from `AnswerOptions`; any left out take the server's defaults (`dtb serve`).
Parameters = create_model(
    "Parameters", __base__=Strict, **{name: request_field(name) for name in option_names(per_request_only=True)}
)


class AnswerRequest(Strict):
    inputs: QuestionContext | list[QuestionContext]
    parameters: Parameters = Parameters()


class Answer(BaseModel):
    answer: str
    score: float
    start: int
    end: int


AnswerResponse = Answer | list[Answer] | list[Answer | list[Answer]]


def create_app(qa: QuestionAnswerer, name: str = "model") -> FastAPI:
    """A FastAPI application answering with `qa`; `name` is what `/info` calls the model."""
    app = FastAPI(title="dynamic-tinybert", summary="Extractive question answering with a length-adaptive BERT")
    one_at_a_time = threading.Lock()

    @app.post("/", response_model=AnswerResponse)
    @app.post("/answer", response_model=AnswerResponse)
    def answer(request: AnswerRequest):
        """Answer one question about a context, or a list of them."""
        pairs = request.inputs if isinstance(request.inputs, list) else [request.inputs]
        if not pairs:
            raise HTTPException(422, "inputs: give at least one {question, context}")
        options = request.parameters.model_dump(exclude_none=True)
        try:
            if "length_config" in options:
                options["length_config"] = LengthConfig.parse(options["length_config"])
            with one_at_a_time:
                results = qa([pair.model_dump() for pair in pairs], **options)
        except ValueError as e:  # so are BudgetError and LengthConfigError
            raise HTTPException(422, str(e)) from None
        return results if isinstance(request.inputs, list) else results[0]

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict:
        """The model, the server's default options and the frontier a `budget` or `latency_ms` chooses from."""
        config = qa.model.config
        frontier = qa.frontier
        return {
            "model": name,
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "token_selection": config.token_selection,
            "defaults": {
                key: str(value) if isinstance(value, LengthConfig) else value
                for key, value in vars(qa.defaults).items()
            },
            "frontier": None
            if frontier is None
            else [
                {
                    "length_config": str(point.length_config),
                    "macs_ratio": point.macs_ratio,
                    "f1": point.f1,
                    "latency_ms": point.latency_ms,
                }
                for point in [*frontier.points, frontier.full]
            ],
        }

    return app
