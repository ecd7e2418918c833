"""Budgets that follow the load: how long a request will take, and the most accurate point that fits an SLO.

A request's time is predicted from the frontier's latency lines (`dtb calibrate` measures them: ms per
question against its real tokens, one line per point) for its own windows, plus the work already queued
ahead of it. The lines were measured one question at a time, possibly on another machine; batched, a
window costs less, and the more so the larger the batch. So the prediction is kept honest against what the
batching loop measures: every batch updates the correction factor of its size class (measured ms over
predicted ms, a moving average; classes 1, 2-3, 4-7, 8-15, 16-31 and 32+ windows), the queue ahead is
predicted at the factor of the batch it will run in, and every request updates the time it spends outside
the model (tokenising, decoding, HTTP).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..cost import macs
from ..frontier import BudgetError, Frontier, Latency, Point
from ..length_config import LengthConfig, is_full_length
from ..model import BertConfig

SMOOTHING = 0.2  # weight of the newest measurement in the moving averages
HEADROOM = 0.8  # the share of the SLO a prediction may fill: predictions are means, the SLO is for the tail
BATCH_CLASSES = (1, 2, 4, 8, 16, 32)  # the smallest batch size of each class a correction is kept for
UNTIMED_MS_PER_TOKEN = 0.2  # a first guess for a model whose frontier was never timed; measurement corrects it
MACS_SHARES_KEPT = 8192  # (length config, window length) pairs whose MACs share is kept, the most recent


class WorkModel:
    """Predicted milliseconds of model work for windows under a length configuration, corrected by measurement."""

    def __init__(self, config: BertConfig, frontier: Frontier | None) -> None:
        self._config = config
        points = [] if frontier is None else [*frontier.points, frontier.full]
        self._lines: dict[LengthConfig | None, Latency] = {
            _key(p.length_config): p.latency for p in points if p.latency is not None
        }
        self._full = self._lines.get(None)
        # bounded: requests may pin any length config, so the (config, window length) pairs seen are unbounded
        self._macs_share = functools.lru_cache(maxsize=MACS_SHARES_KEPT)(self._compute_macs_share)
        self._lock = threading.Lock()
        self._corrections: list[float | None] = [None] * len(BATCH_CLASSES)  # measured / predicted, per class
        self.overhead_ms = 0.0  # time a request spends outside the model, recently

    def window_ms(self, length: int, length_config: LengthConfig | None) -> float:
        """Uncorrected ms of one window of `length` real tokens, as its configuration's latency line says.

        A configuration off the frontier costs the full model's line scaled by its MACs at that length.
        """
        key = _key(length_config)
        line = self._lines.get(key)
        if line is not None:
            return line.at(length)
        full = self._full.at(length) if self._full is not None else UNTIMED_MS_PER_TOKEN * length
        return full if key is None else full * self._macs_share(key, length)

    def macs_ratio(self, lengths: Sequence[int], length_config: LengthConfig | None) -> float:
        """MACs of these windows under the configuration, as a share of the full model's on the same windows."""
        key = _key(length_config)
        if key is None:
            return 1.0
        full = [macs(self._config, n) for n in lengths]
        return sum(f * self._macs_share(key, n) for f, n in zip(full, lengths)) / sum(full)

    def _compute_macs_share(self, length_config: LengthConfig, length: int) -> float:
        """MACs of a window of `length` tokens under the configuration, as a share of the full model's."""
        return macs(self._config, length, length_config) / macs(self._config, length)

    def correction(self, windows: int) -> float:
        """Measured over predicted model time of recent batches of about this many windows (1.0: none yet).

        A size class never measured borrows the nearest measured class's factor.
        """
        own = _batch_class(windows)
        measured = [(abs(i - own), c) for i, c in enumerate(self._corrections) if c is not None]
        return min(measured)[1] if measured else 1.0

    def predict_ms(self, lengths: Sequence[int], length_config: LengthConfig | None) -> float:
        """Corrected ms of model work for windows of these lengths under one configuration, run together."""
        return self.correction(len(lengths)) * sum(self.window_ms(n, length_config) for n in lengths)

    def observe_batch(self, windows: int, uncorrected_ms: float, measured_ms: float) -> None:
        if uncorrected_ms > 0 and measured_ms > 0:
            ratio = measured_ms / uncorrected_ms
            with self._lock:
                i = _batch_class(windows)
                old = self._corrections[i]
                self._corrections[i] = ratio if old is None else old + SMOOTHING * (ratio - old)

    def observe_request(self, total_ms: float, model_ms: float) -> None:
        with self._lock:
            self.overhead_ms += SMOOTHING * (max(0.0, total_ms - model_ms) - self.overhead_ms)


@dataclass(frozen=True)
class Pending:
    """The model's work ahead of a new request: what is queued (uncorrected ms, windows), what runs now."""

    queued_ms: float
    windows: int
    running_ms: float  # predicted, corrected, still to go

    def total_ms(self, work: WorkModel) -> float:
        return self.running_ms + work.correction(self.windows) * self.queued_ms


class LoadAdaptiveBudget:
    """`dtb serve --slo-ms`: the most accurate frontier point a request can run at and still meet the SLO."""

    def __init__(self, frontier: Frontier | None, work: WorkModel, slo_ms: float) -> None:
        if frontier is None:
            raise BudgetError("--slo-ms chooses among frontier points, and this model has no frontier (pareto.json)")
        # most accurate first; each later point is cheaper (the frontier is Pareto-optimal)
        self.points: list[Point] = [frontier.full, *reversed(frontier.points)]
        self.work = work
        self.slo_ms = slo_ms

    def choose(self, lengths: Sequence[int], pending: Pending) -> Point | None:
        """The first point, most accurate first, whose predicted finish fits the SLO; None: none does (shed).

        The request's windows and the queue ahead run in batches as large as both together, at that size's
        correction; the batch in the model now finishes first.
        """
        room = self.slo_ms * HEADROOM - self.work.overhead_ms - pending.running_ms
        correction = self.work.correction(pending.windows + len(lengths))
        for point in self.points:
            own = sum(self.work.window_ms(n, point.length_config) for n in lengths)
            if correction * (pending.queued_ms + own) <= room:
                return point
        return None

    @staticmethod
    def retry_after_s(ahead_ms: float) -> int:
        """Whole seconds until the work queued now is predicted done: what a shed request is told to wait."""
        return max(1, math.ceil(ahead_ms / 1000.0))


def _key(length_config: LengthConfig | None) -> LengthConfig | None:
    """Full length has many spellings (None, all ratios 1.0, with or without +q); they cost the same."""
    return None if is_full_length(length_config) else length_config


def _batch_class(windows: int) -> int:
    return max(i for i, least in enumerate(BATCH_CLASSES) if windows >= least) if windows >= 1 else 0


def batch_class_floor(windows: int) -> int:
    """The smallest batch size of the class a batch of `windows` windows belongs to."""
    return BATCH_CLASSES[_batch_class(windows)]
