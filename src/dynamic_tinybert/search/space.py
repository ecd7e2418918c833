"""The search space: per-layer keep ratios on a grid, never increasing from one layer to the next.

Ratios of each input's real length (not LAT's token counts out of a padded 384) so that a configuration
means the same saving for a short input as for a long one. Values are grid indices internally
(0 = the smallest ratio) so that mutation, crossover and Optuna's samplers all work on integers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..length_config import LengthConfig


@dataclass(frozen=True)
class SearchSpace:
    num_layers: int
    min_ratio: float = 0.1
    ratio_step: float = 0.05
    protect_question: bool = False

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 0 < self.min_ratio <= 1:
            raise ValueError(f"min_ratio must be in (0, 1], got {self.min_ratio}")
        if not 0 < self.ratio_step <= 1:
            raise ValueError(f"ratio_step must be in (0, 1], got {self.ratio_step}")

    @property
    def grid(self) -> tuple[float, ...]:
        """Allowed ratios from min_ratio up to 1.0 (1.0 is always included)."""
        count = int((1.0 - self.min_ratio) / self.ratio_step + 1e-9)
        values = [round(1.0 - i * self.ratio_step, 6) for i in range(count + 1)]
        return tuple(reversed(values))

    @property
    def top(self) -> int:
        return len(self.grid) - 1

    def config(self, genome: tuple[int, ...]) -> LengthConfig:
        return LengthConfig.ratios([self.grid[i] for i in genome], protect_question=self.protect_question)

    def genome(self, config: LengthConfig) -> tuple[int, ...]:
        """The grid indices of a configuration of this space (the inverse of `config`)."""
        grid = self.grid
        indices = tuple(min(range(len(grid)), key=lambda i: abs(grid[i] - v)) for v in config.values)
        if not config.relative or any(abs(grid[i] - v) > 1e-6 for i, v in zip(indices, config.values)):
            raise ValueError(f"length config {config} is not on the search grid {grid}")
        return indices

    def full(self) -> tuple[int, ...]:
        return (self.top,) * self.num_layers

    def constant(self, index: int) -> tuple[int, ...]:
        return (index,) * self.num_layers

    def random(self, rng: random.Random) -> tuple[int, ...]:
        """Uniform per-layer draws, sorted so that no layer keeps more than the one before it."""
        return tuple(sorted((rng.randint(0, self.top) for _ in range(self.num_layers)), reverse=True))

    def mutate(self, genome: tuple[int, ...], probability: float, rng: random.Random) -> tuple[int, ...]:
        """LAT's mutation: each layer, with `probability`, is redrawn between its neighbours' values."""
        values = list(genome)
        for i in range(len(values)):
            if rng.random() < probability:
                high = values[i - 1] if i > 0 else self.top
                low = values[i + 1] if i + 1 < len(values) else 0
                values[i] = rng.randint(low, high)
        return tuple(values)

    @staticmethod
    def crossover(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        """LAT's crossover: the element-wise mean of two parents, rounded (still non-increasing)."""
        return tuple(int((x + y + 1) // 2) for x, y in zip(a, b, strict=True))
