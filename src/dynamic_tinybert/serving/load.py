"""Budgets that follow the load: how long a request will take, and the most accurate point that fits an SLO.

A request's time is predicted from the frontier's latency lines (`dtb calibrate` measures them: ms per
question against its real tokens, one line per point) for its own windows, plus the work already queued
ahead of it. The lines were measured one question at a time, possibly on another machine; batched, a
window costs less, and the more so the larger the batch. So the prediction is kept honest against what the
batching loop measures: every batch updates the correction factor of its size class (measured ms over
predicted ms, a moving average; classes 1, 2-3, 4-7, 8-15, 16-31 and 32+ windows), the queue ahead is
predicted at the factor of the batch it will run in, and every request updates the time its answer takes to
decode once its logits are back. The time a request spent before it is admitted (tokenising, waiting for a
worker) is known then, and counted as it is. The predictions are means and an SLO is for the tail, so the
chooser adds `LatencyTail` to each, the 99th percentile of how much longer than predicted recent requests
took.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..cost import macs
from ..frontier import BudgetError, Frontier, Latency, Point
from ..length_config import LengthConfig, is_full_length
from ..model import BertConfig

SMOOTHING = 0.2  # weight of the newest measurement in the moving averages
TAIL_QUANTILE = 0.99  # the share of requests the SLO is to hold for
TAIL_WINDOW = 300  # recent requests the tail is taken over
TAIL_MIN_REQUESTS = 50  # requests measured before the tail replaces its prior
TAIL_PRIOR = 0.2  # the tail until then, as a share of the SLO: a prediction may fill 80% of it
TAIL_MAX = 0.5  # the largest tail, as a share of the SLO: beyond it the tail is the machine's, and shedding cannot help
BATCH_CLASSES = (1, 2, 4, 8, 16, 32)  # the smallest batch size of each class a correction is kept for
UNTIMED_MS_PER_TOKEN = 0.2  # a first guess for a model whose frontier was never timed; measurement corrects it
MACS_SHARES_KEPT = 8192  # (length config, window length) pairs whose MACs share is kept, the most recent


class WorkModel:
    """Predicted milliseconds of model work for windows under a length configuration, corrected by measurement."""

    def __init__(self, config: BertConfig, frontier: Frontier | None) -> None:
        self._config = config
        points = [] if frontier is None else [*frontier.points, frontier.full]
        self._lines: dict[LengthConfig | None, Latency] = {
            cost_key(p.length_config): p.latency for p in points if p.latency is not None
        }
        self._full = self._lines.get(None)
        # bounded: requests may pin any length config, so the (config, window length) pairs seen are unbounded
        self._macs_share = functools.lru_cache(maxsize=MACS_SHARES_KEPT)(self._compute_macs_share)
        self._lock = threading.Lock()
        self._corrections: list[float | None] = [None] * len(BATCH_CLASSES)  # measured / predicted, per class
        self.decode_ms = 0.0  # time from a request's logits to its answer (a worker's wait, decoding), recently

    def window_ms(self, length: int, length_config: LengthConfig | None) -> float:
        """Uncorrected ms of one window of `length` real tokens, as its configuration's latency line says.

        A configuration off the frontier costs the full model's line scaled by its MACs at that length.
        """
        key = cost_key(length_config)
        line = self._lines.get(key)
        if line is not None:
            return line.at(length)
        full = self._full.at(length) if self._full is not None else UNTIMED_MS_PER_TOKEN * length
        return full if key is None else full * self._macs_share(key, length)

    def macs_ratio(self, lengths: Sequence[int], length_config: LengthConfig | None) -> float:
        """MACs of these windows under the configuration, as a share of the full model's on the same windows."""
        key = cost_key(length_config)
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

    def observe_decoding(self, decode_ms: float) -> None:
        with self._lock:
            self.decode_ms += SMOOTHING * (decode_ms - self.decode_ms)


@dataclass(frozen=True)
class Pending:
    """The model's work ahead of a new request: what is queued (uncorrected ms, windows), what runs now."""

    queued_ms: float
    windows: int
    running_ms: float  # predicted, corrected, still to go

    def total_ms(self, work: WorkModel) -> float:
        return self.running_ms + work.correction(self.windows) * self.queued_ms


class LatencyTail:
    """How many milliseconds longer than predicted the slowest recent requests took: what is added to a
    prediction to fit an SLO meant for the tail.

    Each request served under the SLO adds its time from the decision on less the time predicted then; the
    tail is the `TAIL_QUANTILE` of the last `TAIL_WINDOW` of them (`TAIL_PRIOR` of the SLO until
    `TAIL_MIN_REQUESTS` are in, never below 0). So whatever the mean predictions leave out (batches grown by
    later arrivals, the event loop, a worker's wait, a noisy machine) is measured, and a tail that grew comes
    back down when requests run faster. It is added, not multiplied: what the predictions leave out costs
    about the same at every point, and as a factor it would be charged to the cheap points' small predictions
    many times over, so that a busy server, serving cheap points, measured a large factor, chose cheaper still
    and shed most requests. It stops at `TAIL_MAX` of the SLO: where even one request at a time has a tail
    far above its median, a tail that kept growing would shed every request and measure none (the
    measurements are in docs/experiments/serve-under-load.md).
    """

    def __init__(self, slo_ms: float) -> None:
        self._excess_ms: deque[float] = deque(maxlen=TAIL_WINDOW)
        self._most_ms = TAIL_MAX * slo_ms
        self.ms = TAIL_PRIOR * slo_ms

    def observe(self, predicted_ms: float, measured_ms: float) -> None:
        self._excess_ms.append(measured_ms - predicted_ms)
        if len(self._excess_ms) >= TAIL_MIN_REQUESTS:
            self.ms = min(max(float(np.quantile(self._excess_ms, TAIL_QUANTILE)), 0.0), self._most_ms)


@dataclass(frozen=True)
class Admission:
    """The point a request runs at under the SLO: the time it had taken when admitted, and the time it was
    then predicted to take from there on (before the tail)."""

    point: Point
    elapsed_ms: float
    predicted_ms: float


class LoadAdaptiveBudget:
    """`dtb serve --slo-ms`: the most accurate frontier point a request can run at and still meet the SLO.

    It decides twice. At admission, from the predicted queue ahead (`choose`); and when the request's turn
    in the model comes (`rechoose`, `fits`), from the time it has actually left: the queue may have run
    slower than predicted, and a request that can no longer make its deadline at its point runs at a cheaper
    one, or is shed then (503) rather than answered late. Each decision has its own tail, measured
    against what followed it: the admission's covers the queue, the dispatch's only the batch and decoding.
    """

    def __init__(self, frontier: Frontier | None, work: WorkModel, slo_ms: float) -> None:
        if frontier is None:
            raise BudgetError("--slo-ms chooses among frontier points, and this model has no frontier (pareto.json)")
        # most accurate first; each later point is cheaper (the frontier is Pareto-optimal)
        self.points: list[Point] = [frontier.full, *reversed(frontier.points)]
        self.work = work
        self.slo_ms = slo_ms
        self.tail = LatencyTail(slo_ms)
        self.dispatch_tail = LatencyTail(slo_ms)

    def choose(self, lengths: Sequence[int], pending: Pending, elapsed_ms: float = 0.0) -> Admission | None:
        """The first point, most accurate first, at which a request that has taken `elapsed_ms` so far is
        predicted to finish within the SLO, with the tail added to its prediction; None: none does (shed).

        What is left of a request is the rest of the batch in the model now, the queue ahead with its own
        windows (run in batches as large as both together, at that size's correction), and its decoding.
        """
        fixed_ms = pending.running_ms + self.work.decode_ms  # the same at every point
        correction = self.work.correction(pending.windows + len(lengths))
        for point in self.points:
            own = sum(self.work.window_ms(n, point.length_config) for n in lengths)
            predicted_ms = fixed_ms + correction * (pending.queued_ms + own)
            if elapsed_ms + predicted_ms + self.tail.ms <= self.slo_ms:
                return Admission(point, elapsed_ms, predicted_ms)
        return None

    def observe(self, admission: Admission, total_ms: float) -> None:
        """A request admitted under the SLO took `total_ms` in all."""
        self.tail.observe(admission.predicted_ms, total_ms - admission.elapsed_ms)

    def batch_ms(self, windows: int, uncorrected_ms: float) -> float:
        """Predicted ms from a batch's start to its requests' answers: the batch, corrected, and decoding."""
        return self.work.correction(windows) * uncorrected_ms + self.work.decode_ms

    def fits(self, windows: int, uncorrected_ms: float, left_ms: float) -> bool:
        """Whether a batch starting now answers a request with `left_ms` to its deadline in time."""
        return self.batch_ms(windows, uncorrected_ms) + self.dispatch_tail.ms <= left_ms

    def rechoose(self, lengths: Sequence[int], current: LengthConfig | None, left_ms: float) -> Point | None:
        """At a request's turn: the most accurate point, no more accurate than `current`, at which its windows
        alone meet its deadline `left_ms` away; None: none does (shed it)."""
        keys = [cost_key(p.length_config) for p in self.points]
        first = keys.index(cost_key(current)) if cost_key(current) in keys else 0
        for point in self.points[first:]:
            own = sum(self.work.window_ms(n, point.length_config) for n in lengths)
            if self.fits(len(lengths), own, left_ms):
                return point
        return None

    @staticmethod
    def retry_after_s(ahead_ms: float) -> int:
        """Whole seconds until the work queued now is predicted done: what a shed request is told to wait."""
        return max(1, math.ceil(ahead_ms / 1000.0))


def cost_key(length_config: LengthConfig | None) -> LengthConfig | None:
    """Full length has many spellings (None, all ratios 1.0, with or without +q); they cost the same."""
    return None if is_full_length(length_config) else length_config


def _batch_class(windows: int) -> int:
    return max(i for i, least in enumerate(BATCH_CLASSES) if windows >= least) if windows >= 1 else 0


def batch_class_floor(windows: int) -> int:
    """The smallest batch size of the class a batch of `windows` windows belongs to."""
    return BATCH_CLASSES[_batch_class(windows)]
