"""Measuring candidate configurations: F1/EM/MACs on the search data, latency if asked, each one once.

Both search methods ask this object for points; it caches them (a configuration is never evaluated
twice), logs every evaluation as a JSON line, counts time against the limit and reports progress.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..evaluate import Evaluator
from ..frontier import Point, pareto_front
from ..latency import measure_latencies
from ..length_config import LengthConfig
from .space import SearchSpace

COSTS = ("macs", "latency")


class Candidates:
    """Evaluated configurations of one search, each measured once."""

    def __init__(
        self,
        evaluator: Evaluator,
        space: SearchSpace,
        data_name: str,
        cost: str = "macs",
        latency_batch_size: int = 1,
        latency_questions: int = 32,
        latency_repeats: int = 3,
        time_limit: float | None = None,
        log_path: Path | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(COSTS)}, got {cost!r}")
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit}")
        self.evaluator, self.space, self.data_name, self.cost_name = evaluator, space, data_name, cost
        self.latency_batch_size, self.latency_repeats = latency_batch_size, latency_repeats
        sample = evaluator.dataset.questions[:latency_questions]
        self.latency_sample = ([q.question for q in sample], [q.context for q in sample])
        self.deadline = None if time_limit is None else time.monotonic() + time_limit
        self.log_path, self.progress = log_path, progress
        self.points: dict[LengthConfig, Point] = {}
        self.logged: dict[LengthConfig, Point] = {}  # measured by an earlier run, taken when the search asks
        self.new_evaluations = 0

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def cost(self, point: Point) -> float:
        """The search's cost of a point: fraction of the full MACs, or ms per question here."""
        return point.macs_ratio if self.cost_name == "macs" else point.latency_ms

    def add(self, point: Point) -> None:
        """Record a point measured earlier (a resumed search), so it is not measured again."""
        self.points[point.length_config] = point

    def remember(self, point: Point) -> None:
        """A point an earlier run logged: `evaluate` takes it instead of measuring when the search asks for it,
        so a resumed search replays the same steps (its frontier grows as it did then)."""
        self.logged[point.length_config] = point

    def adopt_logged(self) -> None:
        """Count the logged points the search did not reach as measured: they belong on the frontier all the same."""
        for point in self.logged.values():
            self.add(point)
        self.logged.clear()

    def evaluate(self, config: LengthConfig, source: str) -> Point:
        """The point of a configuration, measured now unless it was before; `source` goes to the log."""
        if config in self.points:
            return self.points[config]
        if config in self.logged:
            self.points[config] = self.logged.pop(config)
            if self.progress is not None:
                self.progress(1)
            return self.points[config]
        # the search decides on the values the log keeps (rounded), so that a resumed one decides the same
        point = Point.from_dict(self.measure(config).to_dict())
        self.points[config] = point
        self.new_evaluations += 1
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"time": round(time.time(), 3), "source": source, **point.to_dict()}) + "\n")
        if self.progress is not None:
            self.progress(1)
        return point

    def measure(self, config: LengthConfig) -> Point:
        evaluation = self.evaluator(config)
        point = Point(
            length_config=config,
            f1=evaluation.f1,
            em=evaluation.exact_match,
            macs=evaluation.mean_macs,
            macs_ratio=evaluation.macs_ratio,
            keep_ratios=self.evaluator.keep_ratios(config),
            data=self.data_name,
        )
        if self.cost_name == "latency":
            (point,) = self.with_latencies([point])
        return point

    def with_latencies(self, points: list[Point]) -> list[Point]:
        """The points with their latencies measured on this machine, side by side in one measurement."""
        questions, contexts = self.latency_sample
        latencies = measure_latencies(
            self.evaluator.qa,
            questions,
            contexts,
            [p.length_config for p in points],
            self.latency_batch_size,
            self.latency_repeats,
        )
        return [p.with_latency(latency, self.latency_batch_size) for p, latency in zip(points, latencies)]

    def frontier(self) -> list[Point]:
        return pareto_front(self.points.values(), cost=self.cost)

    def frontier_genomes(self) -> list[tuple[int, ...]]:
        """The genomes of the frontier's points: the parents a search breeds from."""
        return [self.space.genome(p.length_config) for p in self.frontier()]
