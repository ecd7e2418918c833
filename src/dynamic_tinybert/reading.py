"""One question, many documents: answers ranked across all of them by a score that means the same everywhere.

The pipeline's score (`decoding.py`) is p_start * p_end after a softmax over one window, so it only ranks
spans within that window: a weak passage's best span can outscore a strong passage's. Here every span is
scored on its own, from its raw logits, much as Haystack's `ExtractiveReader` does:

    score = sigmoid(scale * (start_logit + end_logit - null_weight * (cls_start_logit + cls_end_logit)) + bias)

Haystack takes null_weight 0 (the raw sum) and scale 0.1. A window's logits can all shift together without
changing its softmax, which is all training pins down; measured against the window's own no-answer logit
([CLS], null_weight 1) the sum no longer carries that shift, and ranks better across documents
(docs/documents.md). `scale` and `bias` (a `ScoreCalibration`) are fitted by logistic regression so that
a top answer scored 0.8 is right (exact match) about 80% of the time; a model keeps its fit in
`answer_scores.json` beside its weights (scale 0.1, bias 0, null_weight 1 where it has none). The
probability that no document holds the answer is the product of (1 - score) over the answers returned, as
in Haystack. Overlapping answers from one document (the same span seen by two overlapping windows, or a
span inside another) are kept once: the higher-scored one.

`QuestionAnswerer.read` reads in three steps, so that a server computing logits through its own batcher
can reuse the first and last: `prepare_documents` + `QuestionAnswerer.document_windows` (tokenise once),
`QuestionAnswerer.logits`, and `rank_answers`, a pure function of the windows, their logits and the
documents. This module holds the pure parts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decoding import char_span
from .features import Window
from .fileio import atomic_write_text

SCORES_FILE = "answer_scores.json"  # a model's fitted ScoreCalibration, beside its weights
MAX_DOCUMENTS = 1000  # per read: every document is one or more model windows
MAX_CHARACTERS = 2_000_000  # per read, all documents together: about 2,000 windows of 384 tokens
# Options that decide how the empty answer competes in one context; reading reports `no_answer` instead.
NOT_FOR_READING = ("handle_impossible_answer", "null_threshold")


@dataclass(frozen=True)
class Document:
    """One text to read, with the id answers name it by and metadata passed through untouched."""

    id: str
    text: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreCalibration:
    """A span's probability of being right from its logits: sigmoid(scale * margin + bias), where margin is
    start + end logit - null_weight * ([CLS]'s start + end logit) of its window."""

    scale: float = 0.1  # Haystack ExtractiveReader's calibration_factor
    bias: float = 0.0
    null_weight: float = 1.0  # 0: Haystack's raw sum
    fitted_on: str | None = None  # what the fit saw, for the record; None: not fitted

    def __post_init__(self) -> None:
        values = (self.scale, self.bias, self.null_weight)
        if not (all(math.isfinite(v) for v in values) and self.scale > 0 and self.null_weight in (0.0, 1.0)):
            raise ValueError(f"a score calibration needs a finite scale > 0, finite bias, null_weight 0 or 1: {self}")

    def margin(self, span_logits: np.ndarray | float, null_logits: np.ndarray | float) -> np.ndarray:
        """What the score is a function of: the span's start + end logit, less its window's [CLS] pair's."""
        return np.asarray(span_logits, dtype=np.float64) - self.null_weight * np.asarray(null_logits, dtype=np.float64)

    def __call__(self, margins: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.scale * np.asarray(margins, dtype=np.float64) + self.bias)))

    def to_dict(self) -> dict:
        return {"scale": self.scale, "bias": self.bias, "null_weight": self.null_weight, "fitted_on": self.fitted_on}


def load_score_calibration(directory: str | os.PathLike) -> ScoreCalibration:
    """The calibration a model folder keeps in answer_scores.json; Haystack's defaults where it has none."""
    path = Path(directory) / SCORES_FILE
    if not path.is_file():
        return ScoreCalibration()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ScoreCalibration(
            float(data["scale"]), float(data["bias"]), float(data.get("null_weight", 1.0)), data.get("fitted_on")
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a score calibration ({e}); expected {{'scale': ..., 'bias': ...}}") from None


def save_score_calibration(directory: str | os.PathLike, calibration: ScoreCalibration) -> Path:
    path = Path(directory) / SCORES_FILE
    atomic_write_text(path, json.dumps(calibration.to_dict(), indent=2) + "\n")
    return path


def fit_score_calibration(
    margins: Sequence[float],
    correct: Sequence[bool],
    null_weight: float = 1.0,
    fitted_on: str | None = None,
    iterations: int = 50,
) -> ScoreCalibration:
    """Logistic regression of `correct` on the answers' margins (`ScoreCalibration.margin` under
    `null_weight`): Newton's method on scale and bias."""
    x = np.asarray(margins, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.size < 2 or y.min() == y.max():
        raise ValueError("fitting a score calibration needs at least one right and one wrong answer")
    features = np.stack([x, np.ones_like(x)], axis=1)  # (n, 2)
    weights = np.array([0.1, 0.0])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(features @ weights)))
        gradient = features.T @ (p - y)
        hessian = features.T @ (features * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-10:
            break
    if weights[0] <= 0:
        raise ValueError("the fit found right answers no likelier at higher margins: too few answers to fit on?")
    return ScoreCalibration(float(weights[0]), float(weights[1]), null_weight, fitted_on)


def expected_calibration_error(scores: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width score bins, weighted by how many answers each holds."""
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.minimum((scores * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.sum() * abs(correct[members].mean() - scores[members].mean())
    return float(error / max(1, scores.size))


def prepare_documents(
    documents: Sequence, max_documents: int = MAX_DOCUMENTS, max_characters: int = MAX_CHARACTERS
) -> tuple[list[Document], list[dict]]:
    """(the documents to read, notes on those skipped): strings or {"id", "text", "meta"} dicts, checked.

    A string's id is its position; so is a dict's without one. Empty documents are skipped with a note;
    an empty list, a document that is neither, duplicate ids or more than the limits allow are refused.
    """
    if isinstance(documents, str | bytes | dict) or not isinstance(documents, Sequence):
        kind = type(documents).__name__
        raise ValueError(f"documents must be a list of strings or {{'id', 'text', 'meta'}} dicts, got a {kind}")
    if not documents:
        raise ValueError("documents is empty: give at least one document to read")
    if len(documents) > max_documents:
        raise ValueError(f"{len(documents)} documents exceed the limit of {max_documents} per read (max_documents)")
    kept: list[Document] = []
    skipped: list[dict] = []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(documents):
        document = _as_document(item, i)
        if document.id in seen:
            raise ValueError(f"document {i}: id {document.id!r} is used twice; document ids must be unique")
        seen.add(document.id)
        if not document.text.strip():
            skipped.append({"document_id": document.id, "document_index": i, "reason": "empty"})
            continue
        total += len(document.text)
        if total > max_characters:
            raise ValueError(
                f"the documents hold more than {max_characters:,} characters (at document {i}), "
                "the limit per read (max_characters)"
            )
        kept.append(document)
    return kept, skipped


def _as_document(item, index: int) -> Document:
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        return Document(str(index), item)
    if not isinstance(item, dict):
        raise ValueError(f"document {index} must be a string or a dict with 'text', got {type(item).__name__}")
    unknown = item.keys() - {"id", "text", "meta"}
    if unknown:
        raise ValueError(f"document {index} has unknown key {sorted(unknown)[0]!r}; expected 'id', 'text', 'meta'")
    text, doc_id, meta = item.get("text"), item.get("id", str(index)), item.get("meta", {})
    if not isinstance(text, str):
        raise ValueError(f"document {index}: 'text' must be a string, got {type(text).__name__}")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        raise ValueError(f"document {index}: 'id' must be a string or an integer, got {type(doc_id).__name__}")
    if not isinstance(meta, dict):
        raise ValueError(f"document {index}: 'meta' must be a dict, got {type(meta).__name__}")
    return Document(str(doc_id), text, meta)


def window_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, context_mask: np.ndarray, count: int, max_answer_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, start + end logit sums) of the `count` best spans of one window, best first."""
    T = len(start_logits)
    allowed = np.outer(context_mask, context_mask)
    allowed &= np.triu(np.ones((T, T), dtype=bool)) & ~np.triu(np.ones((T, T), dtype=bool), max_answer_len)
    sums = np.where(allowed, start_logits[:, None] + end_logits[None, :], -np.inf).ravel()
    count = min(count, int(allowed.sum()))
    if count == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros(0)
    best = np.argpartition(-sums, count - 1)[:count]
    best = best[np.argsort(-sums[best], kind="stable")]
    starts, ends = np.unravel_index(best, (T, T))
    return starts, ends, sums[best]


def rank_answers(
    windows: Sequence[Window],
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    documents: Sequence[Document],
    top_k: int = 5,
    max_answer_len: int = 15,
    align_to_words: bool = True,
    calibration: ScoreCalibration | None = None,
    overlap_threshold: float | None = 0.01,
) -> dict:
    """The `top_k` answers across all documents, best first, and the probability that none is right.

    `windows[i].example` indexes `documents`; the logits are those `QuestionAnswerer.logits` gives (one
    array per window, unpadded). Answers of one document that overlap by more than `overlap_threshold` of
    the shorter one's characters are duplicates (None: keep overlapping answers, drop only identical ones).
    Returns {"answers": [{"answer", "score", "margin", "document_id", "document_index", "start", "end",
    "window"}], "no_answer": float}; offsets index the document's text, "window" the characters its window
    covered, "margin" is what the score is a sigmoid of (`ScoreCalibration.margin`).
    """
    calibration = calibration or ScoreCalibration()
    candidates_per_window = max(20, 4 * top_k)  # overlapping spans of one window fall out in deduplication
    found = []  # (margin, window index, start token, end token)
    for w, (window, start, end) in enumerate(zip(windows, start_logits, end_logits, strict=True)):
        starts, ends, sums = window_spans(start, end, window.context_mask, candidates_per_window, max_answer_len)
        margins = calibration.margin(sums, start[0] + end[0])  # position 0: [CLS]
        found.extend(zip(margins.tolist(), [w] * len(sums), starts.tolist(), ends.tolist()))
    found.sort(key=lambda c: c[0], reverse=True)
    window_numbers = _window_numbers(windows)
    answers: list[dict] = []
    kept_spans: dict[int, list[tuple[int, int]]] = {}
    for margin, w, s, e in found:
        window = windows[w]
        first, last = char_span(window, s, e, align_to_words)
        spans = kept_spans.setdefault(window.example, [])
        if any(_duplicate((first, last), span, overlap_threshold) for span in spans):
            continue
        spans.append((first, last))
        document = documents[window.example]
        window_start, window_end = _window_chars(window)
        answers.append(
            {
                "answer": document.text[first:last],
                "score": float(calibration(margin)),
                "margin": margin,
                "document_id": document.id,
                "document_index": window.example,
                "start": first,
                "end": last,
                "window": {"index": window_numbers[w], "start": window_start, "end": window_end},
            }
        )
        if len(answers) == top_k:
            break
    no_answer = float(np.prod([1.0 - a["score"] for a in answers])) if answers else 1.0
    return {"answers": answers, "no_answer": no_answer}


def _duplicate(a: tuple[int, int], b: tuple[int, int], threshold: float | None) -> bool:
    if a == b:
        return True
    if threshold is None:
        return False
    overlap = min(a[1], b[1]) - max(a[0], b[0])
    shorter = max(1, min(a[1] - a[0], b[1] - b[0]))
    return overlap > 0 and overlap / shorter > threshold


def _window_numbers(windows: Sequence[Window]) -> list[int]:
    """Each window's position among its document's windows (0 for the first)."""
    seen: dict[int, int] = {}
    numbers = []
    for window in windows:
        numbers.append(seen.get(window.example, 0))
        seen[window.example] = numbers[-1] + 1
    return numbers


def _window_chars(window: Window) -> tuple[int, int]:
    """The characters of its document a window covers."""
    context = np.flatnonzero(window.context_mask)
    offsets = window.encoding.offsets
    return offsets[context[0]][0], offsets[context[-1]][1]


def check_reading_options(options: dict, overlap_threshold: float | None) -> None:
    """Refuse what a read cannot honour: the one-context no-answer options, a threshold outside [0, 1]."""
    refused = [name for name in NOT_FOR_READING if name in options]
    if refused:
        raise ValueError(f"{refused[0]} does not apply to reading: the result's no_answer is the no-answer probability")
    if overlap_threshold is not None and not 0 <= overlap_threshold <= 1:
        raise ValueError(f"overlap_threshold must be between 0 and 1 (or None), got {overlap_threshold!r}")
