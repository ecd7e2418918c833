"""What each layer kept: a question's windows run with the model's trace, for showing where the compute went.

`QuestionAnswerer.explain` runs every window of one question alone with `trace_window`, under the length
configuration an ordinary call with the same options would run, decodes the answers from those very
logits, and `describe` gives the window that holds the best answer (the first one when there is none)
token by token, with the positions each layer kept as the model's `Trace` recorded them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .cost import macs
from .features import Window, collate
from .length_config import LengthConfig, is_full_length
from .model import BertConfig, BertForQuestionAnswering


@dataclass(frozen=True)
class Explanation:
    """One question's answers and, for the window of its best answer, what each layer kept."""

    answers: list[dict]  # as the pipeline gives them, best first
    length_config: LengthConfig | None  # what ran; None: full length
    window: int  # which of the question's windows is described
    windows: int  # how many windows the context was split into
    tokens: list[str]  # the window's tokens, [CLS] question [SEP] context [SEP]
    segments: list[int | None]  # per token: 0 question, 1 context, None a special token
    offsets: list[tuple[int, int]]  # per token: characters of the question (segment 0) or the context (1)
    kept: list[list[int]]  # per layer: the window positions it kept, ascending
    answer_tokens: list[int]  # the window positions of the best answer's context tokens; empty: none here
    macs_ratio: float  # this window's MACs under `length_config`, over the full model's on it

    def to_dict(self) -> dict:
        return {
            "answers": self.answers,
            "length_config": "full" if is_full_length(self.length_config) else str(self.length_config),
            "macs_ratio": self.macs_ratio,
            "window": self.window,
            "windows": self.windows,
            "tokens": self.tokens,
            "segments": self.segments,
            "offsets": [list(span) for span in self.offsets],
            "kept": self.kept,
            "answer_tokens": self.answer_tokens,
        }


@dataclass(frozen=True)
class TracedWindow:
    """One window's run with the trace on: its span logits and the positions each layer kept."""

    start_logits: np.ndarray  # (T,)
    end_logits: np.ndarray  # (T,)
    kept: list[list[int]]  # per layer, ascending


@torch.inference_mode()
def trace_window(
    model: BertForQuestionAnswering, window: Window, length_config: LengthConfig | None, pad_id: int = 0
) -> TracedWindow:
    """Run one window alone (no padding: every position is real) under `length_config`, tracing the model."""
    batch = collate([window], pad_id)
    device = next(model.parameters()).device
    out = model(
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        batch.token_type_ids.to(device),
        length_config=length_config,
        trace=True,
    )
    return TracedWindow(
        out.start_logits[0].float().cpu().numpy(), out.end_logits[0].float().cpu().numpy(), out.trace.kept_positions(0)
    )


def describe(
    config: BertConfig,
    windows: Sequence[Window],
    runs: Sequence[TracedWindow],
    answers: list[dict],
    length_config: LengthConfig | None,
) -> Explanation:
    """The explanation of a question's traced windows: the one holding the best answer (else the first)."""
    best = answers[0] if answers and answers[0]["answer"] else None
    shown = next((i for i, w in enumerate(windows) if best and _covers(w, best["start"], best["end"])), 0)
    window = windows[shown]
    encoding = window.encoding
    return Explanation(
        answers=answers,
        length_config=length_config,
        window=shown,
        windows=len(windows),
        tokens=list(encoding.tokens),
        segments=list(encoding.sequence_ids),
        offsets=[tuple(span) for span in encoding.offsets],
        kept=runs[shown].kept,
        answer_tokens=[] if best is None else _tokens_within(window, best["start"], best["end"]),
        macs_ratio=macs(config, window.length, length_config) / macs(config, window.length),
    )


def _context_tokens(window: Window) -> list[int]:
    return [i for i, segment in enumerate(window.encoding.sequence_ids) if segment == 1]


def _covers(window: Window, start: int, end: int) -> bool:
    """Whether the window's context tokens span the characters start..end."""
    tokens = _context_tokens(window)
    offsets = window.encoding.offsets
    return bool(tokens) and offsets[tokens[0]][0] <= start and end <= offsets[tokens[-1]][1]


def _tokens_within(window: Window, start: int, end: int) -> list[int]:
    """The window's context tokens that overlap the characters start..end."""
    offsets = window.encoding.offsets
    return [i for i in _context_tokens(window) if offsets[i][0] < end and start < offsets[i][1]]
