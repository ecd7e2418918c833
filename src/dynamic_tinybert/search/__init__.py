"""Search length configurations for the accuracy/cost Pareto frontier (LAT evolution or Optuna)."""

from .evolution import EvolutionSettings
from .plot import plot_frontier
from .runner import METHODS, SearchSettings, search, sweep
from .space import SearchSpace

__all__ = ["METHODS", "EvolutionSettings", "SearchSettings", "SearchSpace", "plot_frontier", "search", "sweep"]
