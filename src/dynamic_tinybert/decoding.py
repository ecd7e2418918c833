"""Start/end logits -> answer spans, scored as the transformers question-answering pipeline scores them.

Per window: logits outside the context are masked, start and end are softmax-normalised, a span's score
is p_start * p_end over end >= start and length <= max_answer_len, and [CLS]'s p_start * p_end is the
no-answer score. Across an example's windows, answers with the same text (case-insensitive) add up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .features import Window

MASKED_LOGIT = -10000.0


@dataclass(frozen=True)
class WindowSpans:
    """The best token spans of one window and its no-answer score."""

    starts: np.ndarray  # (k,) token indices
    ends: np.ndarray  # (k,)
    scores: np.ndarray  # (k,) p_start * p_end
    null_score: float  # p_start[CLS] * p_end[CLS]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    context_mask: np.ndarray,
    top_k: int,
    max_answer_len: int,
) -> WindowSpans:
    """The `top_k` best spans of one window, vectorised over all (start, end) pairs.

    Only spans of at most `max_answer_len` tokens can score above 0, so they are ranked from a (T, max_answer_len)
    band, not the pipeline's (T, T) matrix of mostly zeros. Where fewer of them score above 0 than `top_k`, the
    pipeline fills its answers with zero-scored pairs, and so the whole matrix is ranked, as it does.
    """
    allowed = context_mask.copy()
    allowed[0] = True  # [CLS] takes part in the softmax: it carries the no-answer score
    p_start = softmax(np.where(allowed, start_logits, MASKED_LOGIT))
    p_end = softmax(np.where(allowed, end_logits, MASKED_LOGIT))
    null_score = float(p_start[0] * p_end[0])
    p_start[0] = p_end[0] = 0.0
    width = min(max_answer_len, len(p_end))
    following_ends = np.lib.stride_tricks.sliding_window_view(
        np.concatenate([p_end, np.zeros(width - 1, p_end.dtype)]), width
    )
    band = p_start[:, None] * following_ends  # (T, width): [s, j] scores the span s .. s + j
    if np.count_nonzero(band) >= top_k:
        starts, lengths, scores = top_entries(band, top_k)
        ends = starts + lengths
    else:
        starts, ends, scores = top_entries(np.tril(np.triu(np.outer(p_start, p_end)), max_answer_len - 1), top_k)
    keep = allowed[starts] & allowed[ends]
    return WindowSpans(starts[keep], ends[keep], scores[keep], null_score)


def top_entries(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and values of the `k` largest entries of a matrix, largest first (the first of equal ones
    for k = 1, as the pipeline picks)."""
    flat = matrix.ravel()
    if k == 1:
        best = np.array([np.argmax(flat)])
    elif flat.size <= k:
        best = np.argsort(-flat)
    else:
        best = np.argpartition(-flat, k)[:k]
        best = best[np.argsort(-flat[best])]
    rows, columns = np.unravel_index(best, matrix.shape)
    return rows, columns, flat[best]


def char_span(window: Window, start: int, end: int, align_to_words: bool) -> tuple[int, int]:
    """Character offsets in the context of tokens start..end, widened to whole words if asked."""
    encoding = window.encoding
    if align_to_words:
        start_word, end_word = encoding.token_to_word(start), encoding.token_to_word(end)
        if start_word is not None and end_word is not None:
            return encoding.word_to_chars(start_word, 1)[0], encoding.word_to_chars(end_word, 1)[1]
    return encoding.offsets[start][0], encoding.offsets[end][1]


def decode_answers(
    context: str,
    windows: Sequence[Window],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    top_k: int = 1,
    max_answer_len: int = 15,
    handle_impossible_answer: bool = False,
    align_to_words: bool = True,
    null_threshold: float = 0.0,
) -> list[dict]:
    """The `top_k` answers of one example from the logits of all its windows, best first.

    Each answer is `{"score", "start", "end", "answer"}` with character offsets into `context`. With
    `handle_impossible_answer` the empty answer competes too; it wins when its score exceeds the best
    span's by more than `null_threshold` (natural-log units; 0 reproduces the pipeline).
    """
    answers: list[dict] = []
    by_text: dict[str, dict] = {}
    null_score = 1_000_000.0
    candidates_per_window = top_k * 2 + 10 if align_to_words else top_k  # some merge after alignment
    for window, start, end in zip(windows, start_logits, end_logits, strict=True):
        spans = best_spans(start, end, window.context_mask, candidates_per_window, max_answer_len)
        null_score = min(null_score, spans.null_score)
        for s, e, score in zip(spans.starts, spans.ends, spans.scores, strict=True):
            first, last = char_span(window, int(s), int(e), align_to_words)
            text = context[first:last]
            same = by_text.get(text.lower())
            if same is not None:
                same["score"] += float(score)
            else:
                answer = {"score": float(score), "start": first, "end": last, "answer": text}
                by_text[text.lower()] = answer
                answers.append(answer)
    if handle_impossible_answer:
        null_answer = {"score": null_score, "start": 0, "end": 0, "answer": ""}
        answers.append(null_answer)
        margin = math.exp(null_threshold)
        answers.sort(key=lambda a: a["score"] / margin if a is null_answer else a["score"], reverse=True)
    else:
        answers.sort(key=lambda a: a["score"], reverse=True)
    return answers[:top_k]
