"""Multi-objective search with Optuna (NSGA-II or TPE), resumable through its SQLite storage.

Intel searched Dynamic-TinyBERT's lengths this way (SigOpt, or Optuna TPE, 150 trials). Each layer draws
a grid index independently and the draws are sorted, so the space is a fixed box the samplers handle
well and every point of it is a valid non-increasing configuration. Every finished trial keeps its
measured point in the study, so a search started again with the same settings reloads them instead of
measuring them again and runs only the trials still missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..frontier import Point
from .candidates import Candidates

SAMPLERS = ("nsga2", "tpe")


def study_name(candidates: Candidates, sampler: str, seed: int, population: int) -> str:
    """Same settings and data, same study (resumed); anything different starts a new one."""
    space = candidates.space
    identity = {
        "data": candidates.data_name,
        "cost": candidates.cost_name,
        "precision": candidates.evaluator.qa.engine.precision,
        "latency_batch_size": candidates.latency_batch_size if candidates.cost_name == "latency" else None,
        "space": [space.num_layers, space.min_ratio, space.ratio_step, space.protect_question],
        "sampler": sampler,
        "population": population if sampler == "nsga2" else None,
        "seed": seed,
    }
    engine = candidates.evaluator.qa.engine.name
    if engine != "torch":  # named only where it is not torch, so that studies begun before engines still resume
        identity["engine"] = engine
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{sampler}-{candidates.cost_name}-seed{seed}-{digest}"


def optuna_search(
    candidates: Candidates,
    trials: int,
    storage: Path,
    seeds: list[tuple[int, ...]] = (),
    sampler: str = "nsga2",
    seed: int = 0,
    population: int = 20,
) -> int:
    """Run until `trials` trials of this study have finished (counting earlier runs) or time runs out.

    A new study first tries the `seeds` genomes (e.g. the full model). Returns how many trials had
    finished before this call (resumed from the storage).
    """
    import optuna

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = candidates.space
    names = [f"layer_{i}" for i in range(space.num_layers)]
    study = optuna.create_study(
        storage=f"sqlite:///{storage}",
        study_name=study_name(candidates, sampler, seed, population),
        directions=["maximize", "minimize"],
        sampler=(
            optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
            if sampler == "nsga2"
            else optuna.samplers.TPESampler(seed=seed, multivariate=True)
        ),
        load_if_exists=True,
    )
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for trial in finished:
        candidates.add(Point.from_dict(trial.user_attrs["point"]))
    if not study.trials:
        for genome in seeds:
            study.enqueue_trial(dict(zip(names, genome)))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        genome = genome_of({name: trial.suggest_int(name, 0, space.top) for name in names}, names)
        point = candidates.evaluate(space.config(genome), f"optuna trial {trial.number}")
        trial.set_user_attr("point", point.to_dict())
        return point.f1, candidates.cost(point)

    def stop_when_out_of_time(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if candidates.out_of_time:
            study.stop()

    remaining = trials - len(finished)
    if remaining > 0 and not candidates.out_of_time:
        study.optimize(
            objective, n_trials=remaining, timeout=candidates.seconds_left, callbacks=[stop_when_out_of_time]
        )
    return len(finished)


def genome_of(params: dict, names: list[str]) -> tuple[int, ...]:
    return tuple(sorted((int(params[name]) for name in names), reverse=True))
