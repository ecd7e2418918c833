"""The request, answer and error bodies: the OpenAPI schema is generated from these, so they are the contract.

Types are strict (`"top_k": "3"` and `"budget": true` are refused, not coerced), unknown fields are refused,
numbers must be finite, and text must be Unicode a tokenizer can take (no lone surrogates, no NUL).
Requests are shaped like Hugging Face's hosted inference API for question answering; every error,
whatever raised it, is one `ErrorResponse`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from ..features import check_unicode
from ..options import option_field, option_names, option_type
from ..reading import NOT_FOR_READING


def check_text(text: str) -> str:
    if "\x00" in text:
        raise ValueError(f"contains a NUL character (at {text.index(chr(0))})")
    check_unicode(text, "the text")  # the tokenizer's own check, here so that the 422 names the field
    return text


Text = Annotated[str, AfterValidator(check_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class QuestionContext(Strict):
    question: Text
    context: Text


def request_field(name: str) -> tuple:
    """An `AnswerOptions` field as an optional request parameter (a length config travels as its text)."""
    kind = str if name == "length_config" else option_type(name)
    return kind | None, Field(None, description=option_field(name).metadata["help"])


# Per-request options, derived from `AnswerOptions`; any left out take the server's defaults (`dtb serve`).
Parameters = create_model(
    "Parameters", __base__=Strict, **{name: request_field(name) for name in option_names(per_request_only=True)}
)


class AnswerRequest(Strict):
    inputs: QuestionContext | Annotated[list[QuestionContext], Field(min_length=1)]
    parameters: Parameters = Parameters()


class Answer(BaseModel):
    answer: str
    score: float
    start: int
    end: int


AnswerResponse = Answer | list[Answer] | list[Answer | list[Answer]]

# `read` takes the per-request options but those deciding how the empty answer competes in one context
ReadParameters = create_model(
    "ReadParameters",
    __base__=Strict,
    **{name: request_field(name) for name in option_names(per_request_only=True) if name not in NOT_FOR_READING},
)


class Document(Strict):
    id: str | int | None = Field(None, description="what answers name it by (default: its position)")
    text: Text
    meta: dict = Field(default_factory=dict, description="passed through untouched")


class ReadRequest(Strict):
    question: Annotated[Text, Field(min_length=1)]
    documents: Annotated[list[Text | Document], Field(min_length=1)] | None = Field(
        None, description="the texts to read; left out, the server retrieves passages from its --index"
    )
    retrieve: Annotated[int, Field(ge=1)] | None = Field(
        None, description="passages to retrieve from the server's --index (default 20), without documents"
    )
    parameters: ReadParameters = ReadParameters()


class AnswerWindow(BaseModel):
    index: int
    start: int
    end: int


class ReadAnswer(BaseModel):
    answer: str
    score: float = Field(description="calibrated probability that the answer is right, comparable across documents")
    margin: float
    document_id: str
    document_index: int
    start: int = Field(description="character offsets into the document's text")
    end: int
    window: AnswerWindow
    source: str | None = Field(None, description="with --index: the file the passage came from")
    record: str | None = None
    line: int | None = None
    source_start: int | None = None
    source_end: int | None = None


class SkippedDocument(BaseModel):
    document_id: str
    document_index: int
    reason: str


class ReadResponse(BaseModel):
    answers: list[ReadAnswer]
    no_answer: float = Field(description="probability that none of the answers is right")
    skipped: list[SkippedDocument]
    length_config: str | None = Field(None, description="the length configuration that ran; absent: full length")
    passages: int | None = Field(None, description="with --index: passages retrieved and read")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where in the request: e.g. ['body', 'inputs', 0, 'question']")
    msg: str
    type: str


ERROR_TYPES = {
    400: ("bad_request", "the body is not JSON that can be read (e.g. nested too deep)"),
    404: ("not_found", "no such path"),
    405: ("method_not_allowed", "the path does not take this method"),
    408: ("request_timeout", "the body did not arrive within the read timeout"),
    413: ("body_too_large", "the body is larger than `--max-body-bytes`"),
    415: ("unsupported_media_type", "the body is not `application/json`"),
    422: ("invalid_request", "a field is invalid, or a limit (`--max-inputs`, `--max-context-chars`, ...) is exceeded"),
    499: ("client_closed_request", "the client went away; its queued work was dropped"),
    500: ("internal_error", "a bug: the service logged it"),
    503: ("overloaded", "the queue is full or no frontier point meets the SLO; `Retry-After` says when to retry"),
    504: ("timeout", "the request took longer than `--request-timeout-s`; its queued work was dropped"),
}


class ErrorResponse(BaseModel):
    """Every error the service answers with; the values a request sent are never echoed back."""

    detail: str = Field(description="one sentence: which part of the request, or which limit, and why")
    type: str = Field(
        description="a stable code: " + ", ".join(f"`{code}` ({status})" for status, (code, _) in ERROR_TYPES.items())
    )
    errors: list[FieldError] = Field(default_factory=list, description="each invalid field, for a 422")


def error_responses(*statuses: int) -> dict:
    """The OpenAPI `responses` entry for these error statuses."""
    return {status: {"model": ErrorResponse, "description": ERROR_TYPES[status][1]} for status in statuses}
