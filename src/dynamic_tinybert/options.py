"""`AnswerOptions`: the one definition of the options an answer is computed with, and their checks.

Names and defaults are those of the transformers question-answering pipeline, plus this project's choice of
length (`length_config`, `budget` or `latency_ms`) and its batch size. Everything that offers these options
is derived from this class: the `dtb` flags (`cli.common.add_answer_options`), the HTTP request's
`parameters` (`serving.Parameters`) and the benchmark's shared settings, so a new option or default is
written once, here. Each field's metadata holds its help text, and says whether an HTTP request may set
it and whether the transformers pipeline takes it under the same name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, replace

from .features import window_defaults
from .length_config import LengthConfig

MAX_NULL_THRESHOLD = 100.0  # a margin of e^100 already means "never"; beyond it the arithmetic overflows
LENGTH_CHOICES = ("length_config", "budget", "latency_ms")  # at most one of them; each replaces the others


def option(default, help: str, per_request: bool = True, pipeline: bool = False):
    """A field of `AnswerOptions`: its default and help; `per_request`: an HTTP request may set it;
    `pipeline`: the transformers pipeline takes it under this name."""
    return dataclasses.field(default=default, metadata={"help": help, "per_request": per_request, "pipeline": pipeline})


@dataclass(frozen=True)
class AnswerOptions:
    """Per-call settings, defaults as in the transformers pipeline."""

    top_k: int = option(1, "answers per question, best first", pipeline=True)
    doc_stride: int | None = option(
        None, "window overlap in tokens (default: min(max_seq_len // 2, 128))", pipeline=True
    )
    max_answer_len: int = option(15, "longest answer in tokens", pipeline=True)
    max_seq_len: int | None = option(None, "tokens per window (default: min(model positions, 384))", pipeline=True)
    max_question_len: int | None = option(
        None, "cut questions to this many tokens (default: never, as the pipeline with a fast tokenizer)", pipeline=True
    )
    handle_impossible_answer: bool = option(False, "let the empty answer compete", pipeline=True)
    align_to_words: bool = option(True, "answers start and end on word boundaries", pipeline=True)
    null_threshold: float = option(
        0.0, "the empty answer wins only by this margin over the best span (natural-log units)"
    )
    length_config: LengthConfig | None = option(None, "tokens each layer keeps: counts (269,253,...) or ratios")
    budget: float | None = option(None, "fraction of the full model's MACs: the best frontier config within it")
    latency_ms: float | None = option(None, "ms per question on this machine: the best frontier config within it")
    batch_size: int = option(32, "windows per forward pass", per_request=False)

    def __post_init__(self) -> None:
        for name in ("top_k", "max_answer_len", "max_seq_len", "max_question_len", "batch_size"):
            value = getattr(self, name)
            if name in ("max_seq_len", "max_question_len") and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if (
            isinstance(self.null_threshold, bool)
            or not isinstance(self.null_threshold, int | float)
            or not (abs(self.null_threshold) <= MAX_NULL_THRESHOLD)
        ):
            raise ValueError(
                f"null_threshold must be a number within ±{MAX_NULL_THRESHOLD} (natural-log units), "
                f"got {self.null_threshold!r}"
            )
        if self.doc_stride is not None and (not isinstance(self.doc_stride, int) or self.doc_stride < 0):
            raise ValueError(f"doc_stride must be an integer >= 0, got {self.doc_stride!r}")
        if self.length_config is not None and not isinstance(self.length_config, LengthConfig):
            raise ValueError(f"length_config must be a LengthConfig, got {type(self.length_config).__name__}")
        chosen = [n for n in LENGTH_CHOICES if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of length_config, budget and latency_ms, got {' and '.join(chosen)}")

    def updated(self, **changes) -> AnswerOptions:
        """These options with `changes` over them; a length choice given (even None) replaces the one held."""
        unknown = changes.keys() - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown option {sorted(unknown)[0]!r}; the options are {', '.join(option_names())}")
        if changes.keys() & set(LENGTH_CHOICES):
            changes = {name: None for name in LENGTH_CHOICES} | changes
        return replace(self, **changes)

    def with_window_defaults(self, max_positions: int) -> AnswerOptions:
        """The options with the model-dependent window defaults filled in."""
        max_seq_len, doc_stride = window_defaults(max_positions, self.max_seq_len, self.doc_stride)
        return replace(self, max_seq_len=max_seq_len, doc_stride=doc_stride)

    def pipeline_kwargs(self) -> dict:
        """The options the transformers pipeline takes, by its names: for answering with it side by side."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["pipeline"]}


def option_names(per_request_only: bool = False) -> list[str]:
    """Every option's name, in definition order (only those a request may set, if asked)."""
    return [f.name for f in dataclasses.fields(AnswerOptions) if f.metadata["per_request"] or not per_request_only]


def option_type(name: str) -> type:
    """The type of an option's values, None left out (`int | None` -> int)."""
    hint = typing.get_type_hints(AnswerOptions)[name]
    types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return types[0]


def option_field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(AnswerOptions) if f.name == name)
