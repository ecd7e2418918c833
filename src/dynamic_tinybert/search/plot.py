"""The frontier as a picture: F1 against cost, beside the constant keep-ratio curve and the full model."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_write
from ..frontier import Frontier, Point


def plot_frontier(frontier: Frontier, path: str | os.PathLike, cost: str = "macs") -> None:
    """Write the plot to `path` (format from its suffix, e.g. .png or .svg), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def x(points: list[Point]) -> list[float]:
        return [p.macs_ratio if cost == "macs" else p.latency_ms for p in points]

    def y(points: list[Point]) -> list[float]:
        return [p.f1 for p in points]

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if frontier.baseline:
        baseline = sorted(frontier.baseline, key=lambda p: p.macs_ratio)
        axes.plot(x(baseline), y(baseline), "s--", color="tab:gray", label="constant keep ratio", markersize=4)
    axes.step(x(frontier.points), y(frontier.points), "o-", where="post", color="tab:blue", label="Pareto frontier")
    axes.plot(x([frontier.full]), y([frontier.full]), "*", color="tab:red", markersize=14, label="full model")
    axes.set_xlabel("MACs, fraction of the full model (real lengths)" if cost == "macs" else "ms per question")
    axes.set_ylabel(f"F1 on {frontier.full.data}" if len(frontier.full.data) < 40 else "F1 (search data)")
    axes.set_title(f"{frontier.search.get('method', 'search')}: {len(frontier.points)} frontier points")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=suffix))
    plt.close(figure)
