"""SQuAD questions -> labelled training windows, cached on disk, served in length-bucketed batches.

Each window is labelled with the token span of the question's first answer, or [CLS] (0, 0) when the
answer does not lie wholly inside the window or the question has none (SQuAD 2.0). Tokenising all of
SQuAD takes minutes on two cores, so the features are cached, keyed by the tokenizer, the settings and
the questions themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from ..features import make_windows
from ..fileio import atomic_write
from ..squad import SquadDataset, SquadQuestion, load_squad


@dataclass(frozen=True)
class WindowSettings:
    max_seq_len: int = 384
    doc_stride: int = 128
    max_question_len: int = 64


@dataclass
class Features:
    """All training windows, flat: window i's tokens are ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # (total tokens,) int32
    type_ids: np.ndarray  # (total tokens,) int8
    offsets: np.ndarray  # (windows + 1,) int64
    start: np.ndarray  # (windows,) int32 answer start token, 0 = [CLS]
    end: np.ndarray  # (windows,) int32

    def __len__(self) -> int:
        return len(self.start)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def label_windows(tokenizer: Tokenizer, questions: Sequence[SquadQuestion], settings: WindowSettings) -> Features:
    """Tokenise every question into windows and label each window with its answer's token span."""
    windows = make_windows(
        tokenizer,
        [q.question for q in questions],
        [q.context for q in questions],
        settings.max_seq_len,
        settings.doc_stride,
        settings.max_question_len,
    )
    starts, ends = np.zeros(len(windows), np.int32), np.zeros(len(windows), np.int32)
    for i, window in enumerate(windows):
        question = questions[window.example]
        if question.is_impossible or not question.answers:
            continue
        first_char = question.answer_starts[0]
        last_char = first_char + len(question.answers[0])  # exclusive
        context = window.context_mask
        token_starts = np.array([o[0] for o in window.encoding.offsets])
        token_ends = np.array([o[1] for o in window.encoding.offsets])
        inside = np.flatnonzero(context)
        if token_starts[inside[0]] > first_char or token_ends[inside[-1]] < last_char:
            continue  # the answer is not wholly in this window: point at [CLS]
        starts[i] = inside[token_starts[inside] <= first_char][-1]
        ends[i] = inside[token_ends[inside] >= last_char][0]
    lengths = np.array([w.length for w in windows], dtype=np.int64)
    return Features(
        ids=np.concatenate([np.asarray(w.encoding.ids, np.int32) for w in windows]),
        type_ids=np.concatenate([np.asarray(w.encoding.type_ids, np.int8) for w in windows]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        start=starts,
        end=ends,
    )


def cached_features(
    tokenizer: Tokenizer, questions: Sequence[SquadQuestion], settings: WindowSettings, cache_dir: Path | None
) -> Features:
    """`label_windows`, read from `cache_dir` when the same tokenizer, settings and questions were seen."""
    if cache_dir is None:
        return label_windows(tokenizer, questions, settings)
    key = hashlib.sha256()
    vocabulary_and_rules = Tokenizer.from_str(tokenizer.to_str())
    vocabulary_and_rules.no_truncation()  # transient settings must not change the key
    vocabulary_and_rules.no_padding()
    key.update(vocabulary_and_rules.to_str().encode())
    key.update(json.dumps(settings.__dict__, sort_keys=True).encode())
    for q in questions:
        key.update(json.dumps([q.id, q.question, q.context, q.answers, q.answer_starts, q.is_impossible]).encode())
    path = Path(cache_dir) / f"features-{key.hexdigest()[:24]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return Features(**{name: stored[name] for name in stored.files})
    features = label_windows(tokenizer, questions, settings)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **features.__dict__)

    atomic_write(path, write)
    return features


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamic-tinybert" / "features"


def epoch_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """This rank's batches of window indices for one epoch: similar lengths together, in a seeded random order.

    Windows are shuffled, sorted by length within chunks of 50 batches (so a batch pads little), cut into
    batches, and the batches shuffled again. Every rank gets the same number of batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for begin in range(0, len(order), chunk):
        part = order[begin : begin + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    per_rank = len(batches) // world_size
    return batches[rank::world_size][:per_rank]


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    start_positions: torch.Tensor  # (B,)
    end_positions: torch.Tensor  # (B,)

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(*(t.to(device, non_blocking=True) for t in self.__dict__.values()))

    def __len__(self) -> int:
        return self.input_ids.size(0)


def collate(features: Features, indices: np.ndarray, pad_id: int = 0) -> TrainBatch:
    """Pad the chosen windows to the longest of them (dynamic padding)."""
    lengths = features.lengths[indices]
    T = int(lengths.max())
    input_ids = torch.full((len(indices), T), pad_id, dtype=torch.long)
    type_ids = torch.zeros((len(indices), T), dtype=torch.long)
    for row, (i, n) in enumerate(zip(indices, lengths)):
        begin = features.offsets[i]
        input_ids[row, :n] = torch.from_numpy(features.ids[begin : begin + n].astype(np.int64))
        type_ids[row, :n] = torch.from_numpy(features.type_ids[begin : begin + n].astype(np.int64))
    attention_mask = (torch.arange(T)[None, :] < torch.from_numpy(lengths)[:, None]).long()
    return TrainBatch(
        input_ids,
        attention_mask,
        type_ids,
        torch.from_numpy(features.start[indices].astype(np.int64)),
        torch.from_numpy(features.end[indices].astype(np.int64)),
    )


def iterate(features: Features, batches: list[np.ndarray], first: int, pad_id: int = 0) -> Iterator[TrainBatch]:
    """Collated batches from position `first` on (to resume mid-epoch)."""
    for indices in batches[first:]:
        yield collate(features, indices, pad_id)


def training_data(
    tokenizer: Tokenizer,
    data: Path,
    settings: WindowSettings,
    answerable_only: bool = False,
    limit: int | None = None,
    holdout_articles: int = 0,
    eval_data: Path | None = None,
    cache_dir: Path | None = None,
) -> tuple[Features, SquadDataset | None]:
    """Training windows from a SQuAD file and the held-out questions to evaluate on.

    The held-out set is `eval_data` if given, else the last `holdout_articles` articles of `data` (which
    then do not train), else none.
    """
    dataset = load_squad(data, answerable_only=answerable_only, limit=limit)
    held_out = None
    if eval_data is not None:
        held_out = load_squad(eval_data, answerable_only=answerable_only)
    elif holdout_articles:
        dataset, held_out = dataset.split_articles(holdout_articles)
    return cached_features(tokenizer, dataset.questions, settings, cache_dir), held_out
