"""The Length-Adaptive Transformer's evolutionary search, without its two known defects.

A random initial population (plus the full model); then each iteration breeds children from the
current Pareto frontier, by mutation and by crossover, and keeps every measured point. LAT's code drew
its initial population for 12 layers whatever the model had, and updated its frontier by comparing
MACs with a sequence length; here the population has the model's layer count and the frontier compares
cost with cost (`pareto_front`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .candidates import Candidates


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 20
    iterations: int = 30
    mutations: int = 30
    crossovers: int = 30
    mutation_probability: float = 0.5

    def __post_init__(self) -> None:
        for name in ("population", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mutations", "crossovers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.mutation_probability <= 1:
            raise ValueError(f"mutation_probability must be in (0, 1], got {self.mutation_probability}")

    @property
    def evaluations(self) -> int:
        """The most configurations the search can measure besides its seeds (fewer when children repeat)."""
        return self.population + self.iterations * (self.mutations + self.crossovers)


def evolution_search(
    candidates: Candidates, settings: EvolutionSettings, seed: int, seeds: list[tuple[int, ...]] = ()
) -> None:
    """Measure configurations into `candidates` until the iterations or the time run out.

    The initial population is `seeds` (e.g. the full model) and `settings.population` random genomes.
    """
    space, rng = candidates.space, random.Random(seed)
    for genome in [*seeds] + [space.random(rng) for _ in range(settings.population)]:
        if candidates.out_of_time:
            return
        candidates.evaluate(space.config(genome), "initial")
    for iteration in range(settings.iterations):
        parents = candidates.frontier_genomes()
        children = [
            (space.mutate(rng.choice(parents), settings.mutation_probability, rng), f"mutation {iteration}")
            for _ in range(settings.mutations)
        ]
        children += [
            (space.crossover(rng.choice(parents), rng.choice(parents)), f"crossover {iteration}")
            for _ in range(settings.crossovers)
        ]
        for genome, source in children:
            if candidates.out_of_time:
                return
            candidates.evaluate(space.config(genome), source)
