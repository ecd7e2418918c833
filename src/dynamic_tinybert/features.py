"""Question + context -> model inputs: overlapping windows of at most `max_seq_len` tokens.

The windows are exactly those of the transformers question-answering pipeline: `[CLS] question [SEP]
context [SEP]`, the context split with `doc_stride` tokens of overlap, character offsets kept so that an
answer span maps back onto the original context string.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer


@dataclass(frozen=True)
class Window:
    """One model input: a slice of one example's context behind its question."""

    example: int  # index of the (question, context) pair it came from
    encoding: Encoding  # token ids, type ids, offsets, word ids of this window

    @property
    def length(self) -> int:
        return len(self.encoding.ids)

    @property
    def context_mask(self) -> np.ndarray:
        """(T,) True for tokens that may be part of an answer: those of the context."""
        return np.array([s == 1 for s in self.encoding.sequence_ids], dtype=bool)


def window_defaults(max_positions: int, max_seq_len: int | None, doc_stride: int | None) -> tuple[int, int]:
    """(max_seq_len, doc_stride) with the pipeline's defaults: min(positions, 384) and min(max_seq_len // 2, 128)."""
    max_seq_len = max_seq_len if max_seq_len is not None else min(max_positions, 384)
    return max_seq_len, doc_stride if doc_stride is not None else min(max_seq_len // 2, 128)


def make_windows(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_seq_len: int = 384,
    doc_stride: int = 128,
    max_question_len: int | None = None,
) -> list[Window]:
    """Tokenise every (question, context) pair once into its windows, in input order.

    As the transformers pipeline does with a fast tokenizer, a question is never cut by default: only the
    context is split into windows. With `max_question_len`, longer questions are cut to that many tokens
    (what the pipeline documents, and does only with a slow tokenizer). A question so long that no context
    fits beside it with `doc_stride` tokens of overlap is refused with a ValueError naming it.
    """
    if doc_stride >= max_seq_len:
        raise ValueError(f"doc_stride ({doc_stride}) must be smaller than max_seq_len ({max_seq_len})")
    for name, texts in (("question", questions), ("context", contexts)):
        for i, text in enumerate(texts):
            check_unicode(text, f"{name} {i}")
    if max_question_len is not None:
        questions = [_cut_question(tokenizer, q, max_question_len) for q in questions]
    tokenizer.no_padding()
    tokenizer.no_truncation()
    question_lengths = [len(e.ids) for e in tokenizer.encode_batch(list(questions), add_special_tokens=False)]
    for i, n in enumerate(question_lengths):
        room = max_seq_len - n - 3  # [CLS] q [SEP] ... [SEP]
        if room <= doc_stride:
            raise ValueError(
                f"question {i} has {n} tokens, which leaves {room} for the context: "
                f"max_seq_len ({max_seq_len}) must exceed question tokens + 3 + doc_stride ({doc_stride})"
            )
    tokenizer.enable_truncation(max_seq_len, stride=doc_stride, strategy="only_second")
    try:
        encodings = tokenizer.encode_batch(list(zip(questions, contexts, strict=True)))
    finally:
        tokenizer.no_truncation()
    return [
        Window(example, window)
        for example, encoding in enumerate(encodings)
        for window in [encoding, *encoding.overflowing]
    ]


def check_unicode(text: str, name: str) -> None:
    """Refuse text the tokenizer cannot take: a lone surrogate (from a JSON escape such as "\\ud800", or a
    byte that was not UTF-8 in a command-line argument) has no UTF-8 encoding."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid Unicode text: character {e.start} is a lone surrogate ({text[e.start]!r}), "
            "as left by an invalid UTF-8 byte or a broken JSON escape"
        ) from None


def _cut_question(tokenizer: Tokenizer, question: str, max_question_len: int) -> str:
    encoding = tokenizer.encode(question, add_special_tokens=False)
    if len(encoding.ids) <= max_question_len:
        return question
    return question[: encoding.offsets[max_question_len - 1][1]]


@dataclass
class Batch:
    """Windows padded to a common length, as tensors."""

    windows: list[Window]
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)


def batches(windows: Sequence[Window], batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Batches of windows of similar length (sorted by length), so little compute goes to padding.

    Longest first: the first batch takes the largest activation blocks, and every later one fits in memory
    it freed. Shortest first, each batch needs blocks a little larger than any freed so far, the heap
    fragments, and memory grows with the number of questions (docs/experiments/batch-order.md).
    """
    order = sorted(range(len(windows)), key=lambda i: windows[i].length, reverse=True)
    for start in range(0, len(order), batch_size):
        chunk = [windows[i] for i in order[start : start + batch_size]]
        yield collate(chunk, pad_id)


def collate(windows: Sequence[Window], pad_id: int = 0) -> Batch:
    T = max(w.length for w in windows)
    input_ids = torch.full((len(windows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), T), dtype=torch.long)
    token_type_ids = torch.zeros((len(windows), T), dtype=torch.long)
    for row, w in enumerate(windows):
        n = w.length
        input_ids[row, :n] = torch.tensor(w.encoding.ids)
        attention_mask[row, :n] = 1
        token_type_ids[row, :n] = torch.tensor(w.encoding.type_ids)
    return Batch(list(windows), input_ids, attention_mask, token_type_ids)
