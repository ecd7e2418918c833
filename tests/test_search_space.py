"""The search space of the accuracy/cost frontier search: its grid, its genomes and their operators, and the
settings it refuses. No model is needed, so these run in the fast tier (the searches are in test_search.py)."""

from __future__ import annotations

import random

import pytest

from dynamic_tinybert import LengthConfig
from dynamic_tinybert.search import EvolutionSettings, SearchSettings, SearchSpace


def test_the_grid_runs_from_the_smallest_ratio_to_one():
    assert SearchSpace(6).grid == tuple(round(0.1 + 0.05 * i, 6) for i in range(19))
    assert SearchSpace(6, min_ratio=0.1, ratio_step=0.3).grid == (0.1, 0.4, 0.7, 1.0)


def test_random_mutated_and_crossed_genomes_are_valid_non_increasing_configs():
    space, rng = SearchSpace(6), random.Random(0)
    for _ in range(300):
        a, b = space.random(rng), space.random(rng)
        children = [space.mutate(a, 0.5, rng), space.crossover(a, b)]
        for genome in [a, b, *children]:
            assert all(0 <= g <= space.top for g in genome)
            assert list(genome) == sorted(genome, reverse=True)
            space.config(genome)  # a LengthConfig validates monotonicity itself
        assert all(min(x, y) <= c <= max(x, y) for x, y, c in zip(a, b, children[1]))


def test_mutation_changes_layers_only_with_its_probability():
    space, rng = SearchSpace(6), random.Random(1)
    genome = space.random(rng)
    assert space.mutate(genome, 1e-12, rng) == genome
    assert any(space.mutate(genome, 1.0, rng) != genome for _ in range(20))


def test_a_genome_round_trips_through_its_length_config_and_off_grid_configs_are_refused():
    space = SearchSpace(3)
    genome = (18, 10, 2)
    assert space.genome(space.config(genome)) == genome
    with pytest.raises(ValueError, match="not on the search grid"):
        space.genome(LengthConfig.ratios([1.0, 0.33, 0.1]))


def test_bad_search_space_settings_are_refused():
    with pytest.raises(ValueError, match="min_ratio"):
        SearchSpace(6, min_ratio=0.0)
    with pytest.raises(ValueError, match="ratio_step"):
        SearchSpace(6, ratio_step=1.5)
    with pytest.raises(ValueError, match="method"):
        SearchSettings(method="grid")
    with pytest.raises(ValueError, match="mutation_probability"):
        EvolutionSettings(mutation_probability=0.0)
