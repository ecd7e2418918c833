"""The batching loop: one thread owns the model and runs batches gathered across concurrent requests.

As in Text Embeddings Inference, requests never touch the model: the HTTP side tokenises a request into
windows and submits them as a `Job`; this loop takes windows from the queued jobs into a batch of at most
`max_batch_tokens` padded tokens, runs it, and hands each job its logits once all its windows are done.
Only windows under one length configuration share a batch (the oldest job's configuration goes first),
and jobs take turns, one window each per round, so a request with hundreds of windows shares the model
with the small ones queued beside it instead of holding it until it is done. Padding never displaces a
token (`LengthConfig.keep_counts` counts each window's own tokens), so a window's logits are those it
would get alone, up to float rounding. Under `--slo-ms` a job carries a deadline, and its turn is the last
moment to keep it: a job that can no longer make it at its point runs at a cheaper one or is dropped
(`DeadlineMissed`), and a batch grows only while every job in it still makes its deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from ..features import Window
from ..length_config import LengthConfig
from ..pipeline import QuestionAnswerer
from ..runtime import TRIM_INTERVAL_S, trim_heap
from .load import LoadAdaptiveBudget, Pending, WorkModel, batch_class_floor, cost_key
from .metrics import ServerMetrics

# What one forward pass costs beyond its tokens, in tokens' worth: Python and kernel launches per layer.
FORWARD_OVERHEAD_TOKENS = 64


class DeadlineMissed(Exception):
    """A request's turn came too late for any frontier point to answer it within the SLO; it was dropped."""

    def __init__(self, waited_ms: float, needed_ms: float) -> None:
        super().__init__(f"waited {waited_ms:.0f} ms for the model, and its cheapest point needs {needed_ms:.0f} ms")
        self.waited_ms = waited_ms
        self.needed_ms = needed_ms  # predicted, at the cheapest point, from its turn to its answer


@dataclass(eq=False)
class Job:
    """One request's windows on their way through the model."""

    windows: list[Window]
    length_config: LengthConfig | None
    window_ms: list[float]  # predicted, uncorrected, per window
    future: Future = field(default_factory=Future)  # -> (start logits, end logits), one array per window
    submitted: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # time.monotonic() by which its answer is due (--slo-ms)
    started: float | None = None  # when its first window entered the model
    dispatch_ms: float | None = None  # predicted then, its batch and decoding: for one that entered in one batch
    scheduled: int = 0  # windows taken into a batch so far
    done: int = 0
    start_logits: list[np.ndarray | None] = field(default_factory=list)
    end_logits: list[np.ndarray | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.start_logits = [None] * len(self.windows)
        self.end_logits = [None] * len(self.windows)

    @property
    def queue_ms(self) -> float | None:
        return None if self.started is None else 1000.0 * (self.started - self.submitted)


class Batcher:
    """Runs submitted jobs' windows in token-budgeted batches on one thread; `max_batch_tokens` 0: a job at a time."""

    def __init__(
        self,
        qa: QuestionAnswerer,
        work: WorkModel,
        metrics: ServerMetrics,
        max_batch_tokens: int,
        max_wait_ms: float,
        budget: LoadAdaptiveBudget | None = None,
    ) -> None:
        self.qa = qa
        self.work = work
        self.budget = budget  # with --slo-ms: a job with a deadline is checked against it when its turn comes
        self.metrics = metrics
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self._jobs: deque[Job] = deque()
        self._queued_ms = 0.0  # uncorrected predicted work of the windows not yet taken into a batch
        self._running_ms = 0.0  # ... of the batch in the model now
        self._running_windows = 0
        self._running_since = 0.0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        with self._wake:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="dtb-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in the model, cancel what is still queued, and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        with self._wake:
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._queued_ms = 0.0

    def submit(self, windows: list[Window], length_config: LengthConfig | None, deadline: float | None = None) -> Job:
        """Queue a request's windows; its `future` gives their logits in the order given. With a `deadline`
        (and the server's budget), the job may run at a cheaper point than `length_config`, or be dropped
        with `DeadlineMissed`, when its turn comes."""
        if not windows:
            raise ValueError("a job needs at least one window")
        job = Job(windows, length_config, [self.work.window_ms(w.length, length_config) for w in windows])
        job.deadline = deadline
        self.start()
        with self._wake:
            self._jobs.append(job)
            self._queued_ms += sum(job.window_ms)
            self.metrics.queue_windows.inc(len(windows))
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job's windows that have not entered the model (its client left, or its time ran out)."""
        job.future.cancel()
        with self._wake:
            if job in self._jobs:
                self._jobs.remove(job)
                self._forget_unscheduled(job)

    def pending(self) -> Pending:
        """The work a request submitted now would queue behind: queued windows and the running batch's rest."""
        with self._wake:
            windows = sum(len(job.windows) - job.scheduled for job in self._jobs)
            running = self._running_ms * self.work.correction(self._running_windows) - self._elapsed_ms()
            return Pending(self._queued_ms, windows, max(0.0, running))

    def _elapsed_ms(self) -> float:
        return 1000.0 * (time.monotonic() - self._running_since) if self._running_ms else 0.0

    def _forget_unscheduled(self, job: Job) -> None:
        self._queued_ms -= sum(job.window_ms[job.scheduled :])
        self.metrics.queue_windows.dec(len(job.windows) - job.scheduled)
        job.scheduled = len(job.windows)

    def _loop(self) -> None:
        trim_owed = False  # batches have run since the heap was last trimmed
        while True:
            if trim_owed and not self._jobs:  # the model has gone idle: hand back what its batches freed
                trim_owed = not trim_heap()
            with self._wake:
                while not self._jobs and not self._stopping:
                    if trim_owed:  # trimmed too recently: try again once the interval has passed
                        self._wake.wait(TRIM_INTERVAL_S)
                        break
                    self._wake.wait()
                if self._stopping:
                    return
                if not self._jobs:
                    continue
                self._wait_to_fill()
                batch = self._take()
                if not batch:
                    continue
                self._running_ms = sum(job.window_ms[i] for job, i in batch)
                self._running_windows = len(batch)
                self._running_since = time.monotonic()
            self._run(batch)
            trim_owed = True
            with self._wake:
                self._running_ms = 0.0

    def _wait_to_fill(self) -> None:
        """Give a batch that is not full up to `max_wait_ms` after its oldest request to gather company.

        Off by default: the queue fills while the model is busy, and a request that finds it idle is run at once.
        """
        if not self.max_batch_tokens or not self.max_wait_s:
            return
        deadline = self._jobs[0].submitted + self.max_wait_s
        while not self._stopping and self._queued_tokens() < self.max_batch_tokens:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            if not self._jobs:
                return

    def _queued_tokens(self) -> int:
        """Tokens queued under the oldest job's configuration: what the next batch can take."""
        config = self._jobs[0].length_config
        return sum(w.length for job in self._jobs if job.length_config == config for w in job.windows[job.scheduled :])

    def _take(self) -> list[tuple[Job, int]]:
        """The next batch: windows of the oldest job's configuration, jobs in turn, within the token budget
        and, under an SLO, within the time left to every job in it."""
        now = time.monotonic()
        while self._jobs and (self._jobs[0].future.cancelled() or not self._in_time(self._jobs[0], now)):
            self._forget_unscheduled(self._jobs.popleft())
        if not self._jobs:
            return []
        config = self._jobs[0].length_config
        if not self.max_batch_tokens:  # one request at a time: all its windows (it leaves the queue below)
            job = self._jobs[0]
            batch = [(job, i) for i in range(job.scheduled, len(job.windows))]
        else:
            batch = take_in_turns(
                [j for j in self._jobs if j.length_config == config and not j.future.cancelled()], self.max_batch_tokens
            )
        if self.budget is not None:
            batch = self._within_deadlines(batch, now)
        uncorrected_ms = sum(job.window_ms[i] for job, i in batch)
        for job, i in batch:
            job.scheduled = max(job.scheduled, i + 1)
            self._queued_ms -= job.window_ms[i]
            if job.started is None:
                job.started = now
                self.metrics.queue_wait.observe(now - job.submitted)
                if self.budget is not None and job.scheduled == len(job.windows):  # all of it in this batch
                    job.dispatch_ms = self.budget.batch_ms(len(batch), uncorrected_ms)
        self.metrics.queue_windows.dec(len(batch))
        for job in {job for job, _ in batch}:
            if job.scheduled == len(job.windows) and job in self._jobs:
                self._jobs.remove(job)
        return batch

    def _in_time(self, job: Job, now: float) -> bool:
        """Whether a job whose turn has come can still meet its deadline: at its point, or at a cheaper one it
        is moved to; if at none, it is dropped (`DeadlineMissed`) and False."""
        if self.budget is None or job.deadline is None or job.started is not None:
            return True
        lengths = [w.length for w in job.windows]
        point = self.budget.rechoose(lengths, job.length_config, 1000.0 * (job.deadline - now))
        if point is None:
            cheapest = self.budget.points[-1].length_config
            needed_ms = self.budget.batch_ms(len(lengths), sum(self.work.window_ms(n, cheapest) for n in lengths))
            settle(job.future, error=DeadlineMissed(1000.0 * (now - job.submitted), needed_ms))
            return False
        if cost_key(point.length_config) != cost_key(job.length_config):
            self._queued_ms -= sum(job.window_ms)
            job.length_config = point.length_config
            job.window_ms = [self.work.window_ms(n, job.length_config) for n in lengths]
            self._queued_ms += sum(job.window_ms)
        return True

    def _within_deadlines(self, batch: list[tuple[Job, int]], now: float) -> list[tuple[Job, int]]:
        """The longest first part of `batch` (at least one window) that answers every job in it with a deadline
        in time: later windows wait for the next batch rather than make the batch too slow for its jobs."""
        budget = self.budget
        assert budget is not None
        uncorrected_ms, tightest_ms, fitting = 0.0, float("inf"), 1
        for k, (job, i) in enumerate(batch, start=1):
            uncorrected_ms += job.window_ms[i]
            if job.deadline is not None:
                tightest_ms = min(tightest_ms, 1000.0 * (job.deadline - now))
            if budget.fits(k, uncorrected_ms, tightest_ms):
                fitting = k
        return batch[:fitting]

    def _logits_in_groups(self, windows: list[Window], config: LengthConfig | None) -> tuple[list, list]:
        """Logits of a batch run as `length_groups` passes: windows of very different lengths are padded
        less in passes of their own."""
        start_logits: list = [None] * len(windows)
        end_logits: list = [None] * len(windows)
        for group in length_groups([w.length for w in windows]):
            starts, ends = self.qa.logits([windows[i] for i in group], config, len(group))
            for i, start, end in zip(group, starts, ends):
                start_logits[i], end_logits[i] = start, end
        return start_logits, end_logits

    def _run(self, batch: list[tuple[Job, int]]) -> None:
        config = batch[0][0].length_config
        windows = [job.windows[i] for job, i in batch]
        started = time.perf_counter()
        try:
            if self.max_batch_tokens:
                start_logits, end_logits = self._logits_in_groups(windows, config)
            else:
                start_logits, end_logits = self.qa.logits(windows, config, self.qa.defaults.batch_size)
        except Exception as e:  # the model failed: every request in the batch learns why
            for job in {job for job, _ in batch}:
                settle(job.future, error=e)
            return
        measured_ms = 1000.0 * (time.perf_counter() - started)
        self.work.observe_batch(len(windows), sum(job.window_ms[i] for job, i in batch), measured_ms)
        self.metrics.correction.labels(str(batch_class_floor(len(windows)))).set(self.work.correction(len(windows)))
        self.metrics.observe_batch(len(windows), len(windows) * max(w.length for w in windows), measured_ms / 1000)
        for (job, i), start, end in zip(batch, start_logits, end_logits):
            job.start_logits[i], job.end_logits[i] = start, end
            job.done += 1
            if job.done == len(job.windows):
                settle(job.future, (job.start_logits, job.end_logits))


def settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Give a job's future its outcome, unless it has one: its request may cancel it at any moment (a client
    that left, a time limit), without the batcher's lock, and that must not end the batching thread."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def length_groups(lengths: list[int], overhead_tokens: int = FORWARD_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of windows split into forward passes of similar lengths, at the least padded cost.

    A pass costs its size times its longest window (padding is computed, then thrown away) plus a fixed
    overhead; sorted by length, the cheapest split into consecutive groups is a small dynamic programme.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j windows (longest first)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the group order[i:j], whose longest is order[i]
            cost = best[i] + (j - i) * lengths[order[i]] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def take_in_turns(jobs: list[Job], max_tokens: int) -> list[tuple[Job, int]]:
    """(job, window index) pairs for one batch: each job's next window in turn, until the batch would hold
    more than `max_tokens` padded tokens (its size times its longest window); at least one window."""
    batch: list[tuple[Job, int]] = []
    longest = 0
    next_window = {job: job.scheduled for job in jobs}
    while True:
        took = False
        for job in jobs:
            i = next_window[job]
            if i == len(job.windows):
                continue
            length = max(longest, job.windows[i].length)
            if batch and (len(batch) + 1) * length > max_tokens:
                return batch
            batch.append((job, i))
            next_window[job] = i + 1
            longest = length
            took = True
        if not took:
            return batch
