"""One search from start to `pareto.json`: the full model and the constant keep-ratio baseline first,
then the chosen method, then latencies of the frontier and its scores on separate evaluation data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..evaluate import Evaluator
from ..fileio import atomic_write_text
from ..frontier import Frontier, Point, spread
from ..length_config import LengthConfig
from ..pipeline import QuestionAnswerer
from ..squad import SquadDataset
from .candidates import Candidates
from .evolution import EvolutionSettings, evolution_search
from .optuna_search import optuna_search
from .space import SearchSpace

METHODS = ("evolution", "optuna")
LOG_FILE = "search-log.jsonl"
OPTUNA_STORAGE = "search-optuna.db"


@dataclass(frozen=True)
class SearchSettings:
    method: str = "evolution"
    cost: str = "macs"  # "macs": fraction of the full model's; "latency": ms per question measured here
    seed: int = 0
    time_limit: float | None = None  # seconds for the whole search, baseline included
    min_ratio: float = 0.1
    ratio_step: float = 0.05
    protect_question: bool = False
    evolution: EvolutionSettings = field(default_factory=EvolutionSettings)
    trials: int = 150  # optuna
    sampler: str = "nsga2"  # optuna
    latency_batch_size: int = 1
    latency_questions: int = 32
    latency_repeats: int = 3
    max_points: int | None = None  # keep at most this many frontier points, spread over cost (all stay in the log)
    resume: bool = False  # evolution: reuse the points the output folder's log holds for the same data and grid
    start_from: tuple[LengthConfig, ...] = ()  # measured first, beside the full model (e.g. an earlier frontier)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.resume and self.method != "evolution":
            raise ValueError("resume applies to the evolution search; optuna resumes through its study by itself")
        if self.max_points is not None and self.max_points < 2:
            raise ValueError(
                f"max_points must be >= 2 (the cheapest and the most accurate point), got {self.max_points}"
            )

    def budget(self) -> int:
        """The most configurations this search can measure, for a progress bar."""
        space = SearchSpace(1, self.min_ratio, self.ratio_step)
        searched = self.evolution.evaluations if self.method == "evolution" else self.trials
        return len(space.grid) + searched


def search(
    qa: QuestionAnswerer,
    dataset: SquadDataset,
    data_name: str,
    settings: SearchSettings,
    output_dir: Path,
    eval_sets: Mapping[str, SquadDataset] | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> Frontier:
    """Search length configurations of `qa`'s model on `dataset`; save and return the frontier.

    Every measured configuration is appended to `search-log.jsonl` in `output_dir`, where `pareto.json`
    (and for optuna its SQLite study) is written too. `eval_sets` (name -> data, e.g. the dev set) are
    scored only for the frontier's points, after the search, so that they never steer it.
    """
    started = time.monotonic()
    output_dir.mkdir(parents=True, exist_ok=True)
    space = SearchSpace(
        qa.model.config.num_hidden_layers, settings.min_ratio, settings.ratio_step, settings.protect_question
    )
    candidates = Candidates(
        Evaluator(qa, dataset, **options),
        space,
        data_name,
        cost=settings.cost,
        latency_batch_size=settings.latency_batch_size,
        latency_questions=settings.latency_questions,
        latency_repeats=settings.latency_repeats,
        time_limit=settings.time_limit,
        log_path=output_dir / LOG_FILE,
        progress=progress,
    )
    # The full model and the constant keep-ratio curve come first: the plot and the budgets need them,
    # and they give the search good parents.
    seeds = [space.full()] + [space.constant(i) for i in range(space.top - 1, -1, -1)]
    seeds += [genome for genome in map(space.genome, settings.start_from) if genome not in seeds]
    resumed = reuse_logged_points(candidates, output_dir / LOG_FILE) if settings.resume else 0
    if settings.method == "optuna":
        resumed = optuna_search(
            candidates,
            settings.trials,
            output_dir / OPTUNA_STORAGE,
            seeds,
            settings.sampler,
            settings.seed,
            settings.evolution.population,
        )
    else:
        evolution_search(candidates, settings.evolution, settings.seed, seeds)
    candidates.adopt_logged()
    full_config = space.config(space.full())
    if full_config not in candidates.points:
        raise ValueError("the time limit ran out before the full model was measured; give the search more time")
    frontier = candidates.frontier()
    if settings.max_points is not None:
        frontier = spread(frontier, settings.max_points, candidates.cost)
    if settings.cost == "macs":  # so that a latency budget can choose among them too
        configs = {p.length_config for p in frontier} | {full_config}
        for point in candidates.with_latencies([candidates.points[config] for config in configs]):
            candidates.add(point)
        frontier = [candidates.points[p.length_config] for p in frontier]
    full = candidates.points[full_config]
    for name, data in (eval_sets or {}).items():
        evaluator = Evaluator(qa, data, **options)
        frontier = [with_evaluation(p, name, evaluator) for p in frontier]
        full = with_evaluation(full, name, evaluator)
    baseline = [space.config(genome) for genome in seeds]
    result = Frontier(
        points=frontier,
        full=full,
        baseline=[candidates.points[config] for config in baseline if config in candidates.points],
        search={
            "method": settings.method,
            "sampler": settings.sampler if settings.method == "optuna" else None,
            "cost": settings.cost,
            "precision": qa.engine.precision,
            "engine": qa.engine.name,
            "seed": settings.seed,
            "data": data_name,
            "space": {"min_ratio": space.min_ratio, "ratio_step": space.ratio_step},
            "protect_question": space.protect_question,
            "evaluations": len(candidates.points),
            "evaluated_now": candidates.new_evaluations,
            "resumed_trials": resumed,
            "out_of_time": candidates.out_of_time,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    result.save(output_dir)
    return result


def reuse_logged_points(candidates: Candidates, log: Path) -> int:
    """Remember the points an earlier search logged on the same data and grid, so that evolution (which
    replays its seed) measures only what is missing and the frontier counts them all; returns how many
    configurations the log holds.

    The caller vouches that the model and the code that measured them are the same; a configuration can be
    measured again by deleting its lines from the log.
    """
    if not log.exists():
        return 0
    lines = log.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            point = Point.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as error:
            if number == len(lines):  # a line cut short by a crash mid-write: drop it, so the next one starts clean
                atomic_write_text(log, "".join(f"{kept}\n" for kept in lines[:-1]))
                break
            raise ValueError(f"{log} line {number} is not a search log entry: {error}") from None
        config = point.length_config
        if point.data != candidates.data_name or config.protect_question != candidates.space.protect_question:
            continue
        try:
            candidates.space.genome(config)
        except ValueError:
            continue  # measured on another grid
        candidates.remember(point)
    return len(candidates.logged)


def with_evaluation(point: Point, name: str, evaluator: Evaluator) -> Point:
    """The point with its metrics on other data (e.g. the dev set) added under `name`."""
    evaluation = evaluator(point.length_config)
    metrics = {
        "f1": round(evaluation.f1, 4),
        "em": round(evaluation.exact_match, 4),
        "macs": round(evaluation.mean_macs),
        "macs_ratio": round(evaluation.macs_ratio, 6),
        "questions": evaluation.questions,
        "questions_per_second": round(evaluation.questions_per_second, 2),
    }
    return replace(point, evaluations={**point.evaluations, name: metrics})


def sweep(
    qa: QuestionAnswerer,
    dataset: SquadDataset,
    data_name: str,
    ratios: list[float],
    latency_batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> list[Point]:
    """The constant keep-ratio curve: every layer keeps the same fraction of each input's real tokens."""
    num_layers = qa.model.config.num_hidden_layers
    candidates = Candidates(
        Evaluator(qa, dataset, **options),
        SearchSpace(num_layers),
        data_name,
        latency_batch_size=latency_batch_size or 1,
        progress=progress,
    )
    points = [candidates.evaluate(LengthConfig.constant_ratio(r, num_layers), "sweep") for r in ratios]
    return candidates.with_latencies(points) if latency_batch_size else points
