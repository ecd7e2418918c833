"""`dtb search`, `sweep` and `calibrate`: find a model's accuracy/cost frontier and time it on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..fileio import atomic_write_text
from ..frontier import FILENAME as FRONTIER_FILE
from ..frontier import BudgetError, load_frontier, read_frontier
from ..length_config import LengthConfig
from ..runtime import keep_freed_memory
from ..search import COSTS, METHODS, SAMPLERS
from ..squad import load_squad
from .common import (
    WINDOW_OPTIONS,
    UsageError,
    add_answer_options,
    add_device_arg,
    add_model_args,
    add_precision_arg,
    answerer_and_folder,
    duration_arg,
    float_list_arg,
    output_folder,
    positive_int,
    print_frontier,
    print_points,
    window_options,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="find the accuracy/cost Pareto frontier of length configurations")
    sweep = commands.add_parser("sweep", help="the constant keep-ratio curve: the baseline a search must beat")
    for parser in (search, sweep):
        add_model_args(parser)
        add_device_arg(parser)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--data", type=Path, help="the training file: its last --holdout-articles are searched on")
        source.add_argument(
            "--search-data", type=Path, help="search on this whole file instead (e.g. dev, if you must)"
        )
        parser.add_argument(
            "--holdout-articles", type=int, default=2, help="with --data: the held-out articles (as `dtb train`)"
        )
        parser.add_argument("--answerable-only", action="store_true", help="drop unanswerable (SQuAD 2.0) questions")
        parser.add_argument("--limit", type=positive_int, help="only the first N search questions")
        parser.add_argument("--eval-data", type=Path, help="also score the result on this file (e.g. dev-v1.1)")
        parser.add_argument("--eval-limit", type=positive_int, help="only the first N questions of --eval-data")
        add_answer_options(parser, WINDOW_OPTIONS, max_answer_len=30)
        parser.add_argument(
            "--latency-batch-size", type=positive_int, default=1, help="batch size latency is measured at"
        )
        parser.add_argument(
            "--latency-questions", type=positive_int, default=32, help="questions latency is measured on"
        )
        add_precision_arg(parser)
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    search.set_defaults(run=cmd_search)
    sweep.set_defaults(run=cmd_sweep)
    search.add_argument("--method", choices=METHODS, default="evolution")
    search.add_argument("--cost", choices=COSTS, default="macs", help="what the frontier trades F1 for")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--time-limit", type=duration_arg, help="stop searching after this long (e.g. 900, 15m, 2h)")
    search.add_argument("--min-ratio", type=float, default=0.1, help="smallest keep ratio of a layer")
    search.add_argument("--ratio-step", type=float, default=0.05, help="grid step of the keep ratios")
    search.add_argument("--protect-question", action="store_true", help="drop question tokens last")
    search.add_argument(
        "--population", type=positive_int, default=20, help="initial random configs; optuna nsga2 population"
    )
    search.add_argument("--iterations", type=positive_int, default=30, help="evolution: generations")
    search.add_argument("--mutations", type=int, default=30, help="evolution: mutated children per generation")
    search.add_argument("--crossovers", type=int, default=30, help="evolution: crossed children per generation")
    search.add_argument("--mutation-prob", type=float, default=0.5, help="evolution: chance each layer is redrawn")
    search.add_argument(
        "--trials", type=positive_int, default=150, help="optuna: trials in all, counting a resumed run's"
    )
    search.add_argument("--sampler", choices=SAMPLERS, default="nsga2", help="optuna's sampler")
    search.add_argument(
        "--output", type=Path, help="folder for pareto.json, the log and the optuna study (default: the model's)"
    )
    search.add_argument("--plot", type=Path, help="also draw the frontier to this image (e.g. pareto.png)")
    search.add_argument(
        "--max-points", type=int, help="keep at most N frontier points, spread evenly over cost (all stay in the log)"
    )
    search.add_argument(
        "--start-from",
        type=Path,
        help="also measure first the frontier of this pareto.json (or folder holding one), e.g. an earlier search's",
    )
    search.add_argument(
        "--resume",
        action="store_true",
        help="evolution: reuse the points search-log.jsonl in the output folder holds for the same data "
        "(same model and code only; delete a line to measure it again)",
    )
    sweep.add_argument(
        "--ratios",
        type=float_list_arg,
        default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        help="keep ratios to measure (default 1.0,0.9,...,0.1)",
    )
    sweep.add_argument(
        "--output", type=Path, help="write the points as JSON here (default: sweep.json beside the model)"
    )
    sweep.add_argument("--latency", action="store_true", help="also measure ms per question on this machine")

    calibrate = commands.add_parser("calibrate", help="measure the frontier's latencies on this machine")
    calibrate.set_defaults(run=cmd_calibrate)
    add_model_args(calibrate)
    add_device_arg(calibrate)
    calibrate.add_argument("--data", type=Path, required=True, help="SQuAD file whose questions are timed")
    calibrate.add_argument(
        "--limit", type=positive_int, default=32, help="questions to time, spread evenly over the file (default 32)"
    )
    calibrate.add_argument("--batch-size", type=positive_int, default=1, help="batch size the latencies hold for")
    calibrate.add_argument("--repeats", type=positive_int, default=3, help="timed runs per point; the median counts")
    add_precision_arg(calibrate)
    calibrate.add_argument("--output", type=Path, help="folder for the updated pareto.json (default: the model's)")


def search_set(args: argparse.Namespace):
    """The questions a search or sweep measures F1 on, and a description of them for pareto.json."""
    if args.search_data is not None:
        dataset = load_squad(args.search_data, answerable_only=args.answerable_only, limit=args.limit)
        return dataset, f"{args.search_data.name} ({len(dataset.questions)} questions)"
    dataset = load_squad(args.data, answerable_only=args.answerable_only)
    held_out = dataset.split_articles(args.holdout_articles)[1]
    if args.limit is not None:
        held_out = held_out.select(q.id for q in held_out.questions[: args.limit])
    answerable = ", answerable only" if args.answerable_only else ""
    return held_out, (
        f"{args.data.name}: last {args.holdout_articles} articles{answerable} ({len(held_out.questions)} questions)"
    )


def eval_set(args: argparse.Namespace):
    """(name, data) of --eval-data: the name says which questions, for pareto.json and the table."""
    data = load_squad(args.eval_data, limit=args.eval_limit)
    limited = f" (first {len(data.questions)})" if args.eval_limit is not None else ""
    return f"{args.eval_data.name}{limited}", data


def cmd_search(args: argparse.Namespace) -> int:
    from ..search import EvolutionSettings, SearchSettings, plot_frontier, search

    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again

    settings = SearchSettings(
        method=args.method,
        cost=args.cost,
        seed=args.seed,
        time_limit=args.time_limit,
        min_ratio=args.min_ratio,
        ratio_step=args.ratio_step,
        protect_question=args.protect_question,
        evolution=EvolutionSettings(
            args.population, args.iterations, args.mutations, args.crossovers, args.mutation_prob
        ),
        trials=args.trials,
        sampler=args.sampler,
        latency_batch_size=args.latency_batch_size,
        latency_questions=args.latency_questions,
        max_points=args.max_points,
        resume=args.resume,
        start_from=start_configs(args.start_from),
    )
    qa, directory = answerer_and_folder(args)
    output = output_folder(args, directory)
    dataset, name = search_set(args)
    eval_sets = dict([eval_set(args)]) if args.eval_data else None
    with tqdm(total=settings.budget(), unit="config", desc="search", file=sys.stderr, disable=None) as bar:
        frontier = search(qa, dataset, name, settings, output, eval_sets, bar.update, **window_options(args))
    if args.plot is not None:
        plot_frontier(frontier, args.plot, cost=args.cost)
    if args.json:
        print(json.dumps(frontier.to_dict(), indent=1))
    else:
        print(
            f"{len(frontier.points)} frontier points from {frontier.search['evaluations']} configurations; "
            f"written to {output / 'pareto.json'}"
        )
        print_frontier(frontier)
    return 0


def start_configs(path: Path | None) -> tuple[LengthConfig, ...]:
    """The length configurations of the frontier in `path` (a pareto.json or a folder holding one)."""
    if path is None:
        return ()
    frontier = read_frontier(path) if path.is_file() else load_frontier(path)
    if frontier is None:
        raise BudgetError(f"--start-from {path}: no {FRONTIER_FILE} there")
    return tuple(point.length_config for point in frontier.points)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..search import sweep

    keep_freed_memory()
    qa, directory = answerer_and_folder(args)
    target = args.output or output_folder(args, directory) / "sweep.json"
    dataset, name = search_set(args)
    latency_batch = args.latency_batch_size if args.latency else None
    with tqdm(total=len(args.ratios), unit="config", desc="sweep", file=sys.stderr, disable=None) as bar:
        points = sweep(qa, dataset, name, args.ratios, latency_batch, bar.update, **window_options(args))
    if args.eval_data is not None:
        from ..evaluate import Evaluator
        from ..search.runner import with_evaluation

        name, data = eval_set(args)
        evaluator = Evaluator(qa, data, **window_options(args))
        points = [with_evaluation(p, name, evaluator) for p in points]
    result = {"format": 1, "data": name, "points": [p.to_dict() for p in points]}
    atomic_write_text(target, json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"written to {target}")
        print_points(points)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..latency import calibrate, evenly_spaced

    keep_freed_memory()
    qa, directory = answerer_and_folder(args)
    output = output_folder(args, directory)
    if qa.frontier is None:
        raise UsageError(f"dtb calibrate: {directory} has no frontier (pareto.json); run `dtb search` first")
    sample = evenly_spaced(load_squad(args.data).questions, args.limit)
    frontier = calibrate(qa, [q.question for q in sample], [q.context for q in sample], args.batch_size, args.repeats)
    frontier.search["calibrated"] = {
        "questions": len(sample),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "engine": qa.engine.name,
    }
    frontier.save(output)
    print(f"latencies of {len(frontier.points)} frontier points measured here; written to {output / FRONTIER_FILE}")
    print_frontier(frontier)
    return 0
