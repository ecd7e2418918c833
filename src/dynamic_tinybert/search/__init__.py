"""Search length configurations for the accuracy/cost Pareto frontier (LAT evolution or Optuna)."""

from .candidates import COSTS
from .evolution import EvolutionSettings
from .optuna_search import SAMPLERS
from .plot import plot_frontier
from .runner import METHODS, SearchSettings, search, sweep
from .space import SearchSpace

__all__ = [
    "COSTS",
    "METHODS",
    "SAMPLERS",
    "EvolutionSettings",
    "SearchSettings",
    "SearchSpace",
    "plot_frontier",
    "search",
    "sweep",
]
