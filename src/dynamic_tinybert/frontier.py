"""The accuracy/cost Pareto frontier saved beside a model (`pareto.json`), and choosing from it by budget.

A search (`dynamic_tinybert.search`) measures length configurations; the frontier keeps those that no
other configuration beats on both F1 and cost. At inference a budget (a fraction of the full model's
MACs on the same inputs at their real length, or milliseconds per question on this machine) picks the
most accurate point that fits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .fileio import atomic_write_text
from .length_config import LengthConfig

FILENAME = "pareto.json"
FORMAT_VERSION = 1


class BudgetError(ValueError):
    """A budget that cannot be met or makes no sense, or a model without a frontier; one line."""


@dataclass(frozen=True)
class Latency:
    """What one length configuration was measured to cost here, per question."""

    ms: float  # mean ms per question over the sample, i.e. at `tokens` real tokens per question
    tokens: float | None  # mean real tokens per question (all its windows) of the sample; None: not recorded
    ms_per_token: float = 0.0  # slope of the line fitted over the sample's questions; never negative

    def at(self, tokens: float | None) -> float:
        """Predicted ms per question for questions of `tokens` real tokens (None: the sample's mean).

        A latency recorded without its sample's length (a pareto.json from before lengths counted) is flat.
        """
        if tokens is None or self.tokens is None:
            return self.ms
        return max(0.0, self.ms + self.ms_per_token * (tokens - self.tokens))


def fit_latency(tokens: np.ndarray, ms: np.ndarray) -> Latency:
    """The least-squares line of ms per question against tokens per question, slope clamped at 0.

    The line goes through the means, so `Latency.ms` is the sample's mean whatever the slope; a sample
    whose questions all have one length says nothing about the slope, which is then 0.
    """
    spread = float(np.var(tokens))
    slope = float(np.cov(tokens, ms, bias=True)[0, 1] / spread) if spread > 0 else 0.0
    return Latency(ms=float(np.mean(ms)), tokens=float(np.mean(tokens)), ms_per_token=max(0.0, slope))


@dataclass(frozen=True)
class Point:
    """One length configuration and what it was measured to cost and score."""

    length_config: LengthConfig
    f1: float
    em: float
    macs: float  # mean per question, inputs at their real length
    macs_ratio: float  # of the full model's MACs on the same inputs
    keep_ratios: tuple[float, ...]  # mean fraction of each input's real tokens each layer keeps
    data: str  # what F1, EM and MACs were measured on
    latency: Latency | None = None  # per question, where it was last measured (None: never timed)
    latency_batch_size: int | None = None  # the batch size it was timed at
    evaluations: dict[str, dict] = field(default_factory=dict)  # other data (e.g. dev) -> its metrics

    @property
    def latency_ms(self) -> float | None:
        """Mean ms per question over the timed sample; None: not measured."""
        return None if self.latency is None else self.latency.ms

    def to_dict(self) -> dict:
        data = {
            "length_config": self.length_config.to_dict(),
            "f1": round(self.f1, 4),
            "em": round(self.em, 4),
            "macs": round(self.macs),
            "macs_ratio": round(self.macs_ratio, 6),
            "keep_ratios": [round(r, 4) for r in self.keep_ratios],
            "data": self.data,
        }
        if self.latency is not None:
            data["latency_ms"] = round(self.latency.ms, 4)
            data["latency_batch_size"] = self.latency_batch_size
            if self.latency.tokens is not None:
                data["latency_tokens"] = round(self.latency.tokens, 2)
                data["latency_ms_per_token"] = round(self.latency.ms_per_token, 6)
        if self.evaluations:
            data["evaluations"] = self.evaluations
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Point:
        return cls(
            length_config=LengthConfig.from_dict(data["length_config"]),
            f1=float(data["f1"]),
            em=float(data["em"]),
            macs=float(data["macs"]),
            macs_ratio=float(data["macs_ratio"]),
            keep_ratios=tuple(float(r) for r in data["keep_ratios"]),
            data=str(data["data"]),
            latency=None
            if data.get("latency_ms") is None
            else Latency(
                ms=float(data["latency_ms"]),
                tokens=None if data.get("latency_tokens") is None else float(data["latency_tokens"]),
                ms_per_token=float(data.get("latency_ms_per_token", 0.0)),
            ),
            latency_batch_size=data.get("latency_batch_size"),
            evaluations=dict(data.get("evaluations", {})),
        )

    def with_latency(self, latency: Latency, batch_size: int) -> Point:
        return replace(self, latency=latency, latency_batch_size=batch_size)

    def latency_at(self, tokens: float | None) -> float | None:
        """Predicted ms per question for questions of `tokens` real tokens; None: not measured."""
        return None if self.latency is None else self.latency.at(tokens)


def pareto_front(points: Iterable[Point], cost: Callable[[Point], float] = lambda p: p.macs_ratio) -> list[Point]:
    """The points no other point beats on both F1 (higher) and cost (lower), cheapest first.

    Along the result cost and F1 both strictly increase; of equal points the first given is kept.
    """
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (cost(p), -p.f1)):
        if not front or point.f1 > front[-1].f1:
            front.append(point)
    return front


def spread(front: list[Point], max_points: int, cost: Callable[[Point], float] = lambda p: p.macs_ratio) -> list[Point]:
    """At most `max_points` of a frontier (cheapest first), spread evenly over its cost range.

    The cheapest and the most accurate point always stay; each other slot takes the unused point nearest
    to its evenly spaced cost. A shipped frontier stays short enough to re-time and to read.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2 (the cheapest and the most accurate point), got {max_points}")
    if len(front) <= max_points:
        return list(front)
    low, high = cost(front[0]), cost(front[-1])
    chosen = {0, len(front) - 1}
    for k in range(1, max_points - 1):
        target = low + k * (high - low) / (max_points - 1)
        unused = [i for i in range(len(front)) if i not in chosen]
        chosen.add(min(unused, key=lambda i: abs(cost(front[i]) - target)))
    return [front[i] for i in sorted(chosen)]


@dataclass
class Frontier:
    """What `pareto.json` holds: the frontier, the full model and the constant keep-ratio baseline."""

    points: list[Point]  # cheapest first, F1 increasing
    full: Point  # the full-length model on the same data
    baseline: list[Point] = field(default_factory=list)  # constant keep ratio per layer, for comparison
    search: dict = field(default_factory=dict)  # how it was found: method, seed, cost, evaluations, time

    def choose(
        self, budget: float | None = None, latency_ms: float | None = None, tokens: float | None = None
    ) -> Point:
        """The most accurate point within `budget` (fraction of full MACs) or `latency_ms` (per question).

        A latency is predicted for questions of `tokens` real tokens each (None: as long as those timed).
        """
        if (budget is None) == (latency_ms is None):
            raise BudgetError("give exactly one of budget (a fraction of the full model's MACs) or latency_ms")
        if budget is not None:
            if not _is_number(budget) or not 0 < budget <= 1:
                raise BudgetError(f"budget must be a fraction of the full model's MACs in (0, 1], got {budget!r}")
            fits = [p for p in self.points if p.macs_ratio <= budget + 1e-9]
            if not fits:
                cheapest = min(p.macs_ratio for p in self.points)
                raise BudgetError(
                    f"budget {budget} is below the cheapest point of the frontier ({cheapest:.3f} of the full MACs)"
                )
        else:
            if not _is_number(latency_ms) or latency_ms <= 0:
                raise BudgetError(f"latency_ms must be a positive number of milliseconds, got {latency_ms!r}")
            timed = [p for p in self.points if p.latency_ms is not None]
            if not timed:
                raise BudgetError(
                    "the frontier has no measured latencies; run `dtb search --cost latency` on this machine"
                )
            fits = [p for p in timed if p.latency_at(tokens) <= latency_ms]
            if not fits:
                fastest = min(p.latency_at(tokens) for p in timed)
                length = "" if tokens is None else f" of {tokens:.0f} tokens"
                raise BudgetError(
                    f"latency_ms {latency_ms} is below the fastest frontier point "
                    f"({fastest:.2f} ms per question{length})"
                )
        return max(fits, key=lambda p: p.f1)

    def check(self, budget: float | None = None, latency_ms: float | None = None) -> None:
        """Refuse a budget that no request could meet, before any request's length is known.

        A MACs budget does not depend on the length, so this is the choice itself; a latency budget is
        checked at the shortest request, whose predicted latency is the lowest any request can have.
        """
        self.choose(budget=budget, latency_ms=latency_ms, tokens=None if latency_ms is None else 0.0)

    def with_latencies(self, measure: Callable[[list[LengthConfig]], list[Latency]], batch_size: int) -> Frontier:
        """The frontier with every point's latency (and the full model's) measured again, all in one `measure`."""
        points = [*self.points, self.full]
        latencies = measure([p.length_config for p in points])
        timed = [p.with_latency(latency, batch_size) for p, latency in zip(points, latencies)]
        return replace(self, points=timed[:-1], full=timed[-1])

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            "search": self.search,
            "full": self.full.to_dict(),
            "frontier": [p.to_dict() for p in self.points],
            "baseline": [p.to_dict() for p in self.baseline],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Frontier:
        return cls(
            points=[Point.from_dict(p) for p in data["frontier"]],
            full=Point.from_dict(data["full"]),
            baseline=[Point.from_dict(p) for p in data.get("baseline", [])],
            search=dict(data.get("search", {})),
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `pareto.json` atomically, one point per line so that it reads and diffs well."""
        data = self.to_dict()
        lines = [f' "{key}": {json.dumps(data[key])},' for key in ("format", "search", "full")]
        for key in ("frontier", "baseline"):
            points = ",\n".join(f"  {json.dumps(point)}" for point in data[key])
            lines.append(f' "{key}": [\n{points}\n ],')
        path = Path(directory) / FILENAME
        atomic_write_text(path, "{\n" + "\n".join(lines).removesuffix(",") + "\n}\n")
        return path


def load_frontier(directory: str | os.PathLike) -> Frontier | None:
    """The frontier saved in a checkpoint directory, or None if it has none."""
    path = Path(directory) / FILENAME
    return read_frontier(path) if path.is_file() else None


def read_frontier(path: str | os.PathLike) -> Frontier:
    """The frontier in a `pareto.json`-format file of any name; a clear error if it is not one."""
    path = Path(path)
    try:
        frontier = Frontier.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise BudgetError(f"{path}: not a valid frontier file ({type(e).__name__}: {e})") from None
    if not frontier.points:
        raise BudgetError(f"{path}: the frontier has no points")
    return frontier


def require_frontier(directory: str | os.PathLike) -> Frontier:
    frontier = load_frontier(directory)
    if frontier is None:
        raise BudgetError(
            f"{directory}: the model has no accuracy/cost frontier ({FILENAME}); run `dtb search` to find one"
        )
    return frontier


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
