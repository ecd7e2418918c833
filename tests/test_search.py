"""Searching the accuracy/cost frontier: both methods on a model trained with LengthDrop, resuming an
interrupted Optuna study, time limits, logs, plots, the sweep and `dtb search` (the search space's operators
are in test_search_space.py).

The model is a tiny 3-layer BERT trained here on the synthetic who-lives-where task, then with LengthDrop
(about 25 s on one thread), so that dropping tokens really costs F1 and a search has something to find.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.checkpoint import save_checkpoint
from dynamic_tinybert.cli import main
from dynamic_tinybert.evaluate import evaluate
from dynamic_tinybert.frontier import Frontier, Point, load_frontier
from dynamic_tinybert.search import EvolutionSettings, SearchSettings, SearchSpace, plot_frontier, search, sweep
from dynamic_tinybert.search.runner import LOG_FILE
from dynamic_tinybert.training import LengthDrop, SpanLoss, TrainSettings, WindowSettings, label_windows, train

from conftest import cached_checkpoint, learner_model, make_tiny_tokenizer, one_torch_thread

pytestmark = pytest.mark.slow

SEARCH_DATA = synthetic_dataset(200, seed=3, facts=2)
DEV = synthetic_dataset(150, seed=2, facts=2, prefix="dev")
OPTIONS = dict(max_answer_len=30, batch_size=64)
EVOLUTION = SearchSettings(
    method="evolution",
    evolution=EvolutionSettings(population=8, iterations=4, mutations=10, crossovers=10),
    latency_questions=8,
)
OPTUNA = SearchSettings(method="optuna", trials=60, evolution=EvolutionSettings(population=10), latency_questions=8)


@pytest.fixture(scope="module")
def model_dir(request, tmp_path_factory) -> Path:
    """A 3-layer BERT trained on 6,000 synthetic questions (10 epochs), then 2 epochs of LengthDrop: trained once
    per session, or reused from pytest's cache (conftest.cached_checkpoint)."""

    def train_into(folder: Path) -> None:
        torch.manual_seed(0)
        tokenizer = make_tiny_tokenizer()
        model = learner_model(seed=0, num_hidden_layers=3)
        features = label_windows(tokenizer, synthetic_dataset(6000, seed=1, facts=2).questions, WindowSettings(64, 16))
        runs = tmp_path_factory.mktemp("runs")
        for name, objective, epochs, lr in [
            ("span", SpanLoss(), 10, 1e-3),
            ("length-drop", LengthDrop(SpanLoss(), ratio_bound=0.3), 2, 5e-4),
        ]:
            settings = TrainSettings(runs / name, epochs=epochs, batch_size=32, learning_rate=lr, save_every=10**6)
            with one_torch_thread():
                train(model, tokenizer, objective, features, settings)
        save_checkpoint(model.eval(), tokenizer, folder)

    return cached_checkpoint(request, train_into)


@pytest.fixture(scope="module")
def qa(model_dir) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(model_dir)


def run_search(qa, settings: SearchSettings, output: Path, **kwargs) -> Frontier:
    return search(qa, SEARCH_DATA, "synthetic seed 3", settings, output, **OPTIONS, **kwargs)


@pytest.fixture(scope="module")
def evolution(qa, tmp_path_factory) -> Frontier:
    return run_search(qa, EVOLUTION, tmp_path_factory.mktemp("evolution"), eval_sets={"dev": DEV})


@pytest.fixture(scope="module")
def optuna_frontier(qa, tmp_path_factory) -> Frontier:
    return run_search(qa, OPTUNA, tmp_path_factory.mktemp("optuna"))


def is_constant(point: Point) -> bool:
    return len(set(point.length_config.values)) == 1


def beats_the_constant_curve(frontier: Frontier) -> list[Point]:
    """Searched points that reach their F1 with fewer MACs than any constant keep ratio reaching it."""
    winners = []
    for point in frontier.points:
        as_good = [b.macs_ratio for b in frontier.baseline if b.f1 >= point.f1]
        if not is_constant(point) and as_good and point.macs_ratio < min(as_good) - 1e-9:
            winners.append(point)
    return winners


def signature(frontier: Frontier) -> list[tuple]:
    return [(str(p.length_config), round(p.f1, 4), round(p.macs_ratio, 6)) for p in frontier.points]


# --------------------------------------------------------------------------------------------------
# Both methods on a model trained with LengthDrop


@pytest.mark.parametrize("method", ["evolution", "optuna_frontier"])
def test_the_frontier_is_monotone_in_cost_and_f1(method, request):
    frontier = request.getfixturevalue(method)
    points = frontier.points
    assert len(points) >= 5
    assert all(a.macs_ratio < b.macs_ratio and a.f1 < b.f1 for a, b in zip(points, points[1:]))
    assert max(p.f1 for p in points) >= frontier.full.f1  # the frontier reaches the full model's F1


@pytest.mark.parametrize("method", ["evolution", "optuna_frontier"])
def test_the_frontier_has_configs_cheaper_than_the_constant_ratio_curve_at_equal_f1(method, request):
    frontier = request.getfixturevalue(method)
    assert len(frontier.baseline) == len(SearchSpace(3).grid)
    assert len(beats_the_constant_curve(frontier)) >= 2


@pytest.mark.parametrize("method", ["evolution", "optuna_frontier"])
def test_dropping_tokens_costs_f1_on_this_model(method, request):
    frontier = request.getfixturevalue(method)
    cheapest = min(frontier.baseline, key=lambda p: p.macs_ratio)
    assert cheapest.f1 < frontier.full.f1 - 20  # so the search has a real trade-off to find


def test_evolution_is_reproducible_with_a_fixed_seed(qa, evolution, tmp_path):
    again = run_search(qa, EVOLUTION, tmp_path)
    assert signature(again) == signature(evolution)


def test_optuna_is_reproducible_with_a_fixed_seed(qa, optuna_frontier, tmp_path):
    again = run_search(qa, OPTUNA, tmp_path)
    assert signature(again) == signature(optuna_frontier)


def test_the_frontier_and_its_points_are_measured_on_the_search_data(evolution):
    for point in [*evolution.points, evolution.full]:
        assert point.data == "synthetic seed 3"
        assert len(point.keep_ratios) == 3
        assert all(a >= b for a, b in zip(point.keep_ratios, point.keep_ratios[1:]))
    assert evolution.full.macs_ratio == 1.0
    assert evolution.search["method"] == "evolution" and evolution.search["seed"] == 0


def test_the_evaluation_data_is_scored_only_for_the_frontier_after_the_search(evolution, qa):
    for point in [*evolution.points, evolution.full]:
        dev = point.evaluations["dev"]
        assert dev["questions"] == len(DEV.questions)
        assert dev["f1"] == pytest.approx(evaluate(qa, DEV, point.length_config, **OPTIONS).f1, abs=1e-3)
    assert all("dev" not in p.evaluations for p in evolution.baseline)


def test_a_macs_search_measures_latency_of_the_frontier_points_for_latency_budgets(evolution):
    assert all(p.latency_ms > 0 and p.latency_batch_size == 1 for p in evolution.points)
    assert evolution.full.latency_ms > 0


def test_pareto_json_is_written_beside_the_results_and_loads_back(evolution, tmp_path, qa):
    frontier = run_search(qa, replace(EVOLUTION, evolution=EvolutionSettings(2, 1, 2, 2)), tmp_path)
    loaded = load_frontier(tmp_path)
    assert signature(loaded) == signature(frontier)
    assert loaded.full.f1 == pytest.approx(frontier.full.f1, abs=1e-4)


def test_every_evaluated_configuration_is_logged_once(qa, tmp_path):
    frontier = run_search(qa, replace(EVOLUTION, evolution=EvolutionSettings(4, 2, 5, 5)), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(lines) == frontier.search["evaluated_now"] == frontier.search["evaluations"]
    configs = [json.dumps(line["length_config"], sort_keys=True) for line in lines]
    assert len(set(configs)) == len(configs)
    assert {"f1", "em", "macs", "macs_ratio", "keep_ratios", "source", "time"} <= lines[0].keys()
    assert lines[0]["source"] == "initial" and lines[0]["length_config"]["ratios"] == [1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------------
# Interrupted searches, time limits, latency as the cost


class Interrupt(Exception):
    pass


def crash_after(measurements: int):
    """A progress callback that interrupts the search at its `measurements`-th measured configuration."""
    seen = []

    def progress(n: int) -> None:
        seen.append(n)
        if len(seen) == measurements:
            raise Interrupt

    return progress


def test_an_interrupted_optuna_search_resumes_without_repeating_finished_trials(qa, tmp_path):
    settings = replace(OPTUNA, trials=30)
    with pytest.raises(Interrupt):
        run_search(qa, settings, tmp_path, progress=crash_after(24))
    first_run = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(first_run) == 24

    frontier = run_search(qa, settings, tmp_path)
    second_run = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()][24:]
    finished_first = {json.dumps(line["length_config"]) for line in first_run[:23]}  # the 24th crashed mid-trial
    assert frontier.search["resumed_trials"] == 23
    assert not finished_first & {json.dumps(line["length_config"]) for line in second_run}
    assert len(second_run) == frontier.search["evaluated_now"] <= 30 - 23 + 1

    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'search-optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 30


def test_an_interrupted_evolution_search_resumed_from_its_log_ends_where_an_uninterrupted_one_does(
    qa, evolution, tmp_path
):
    with pytest.raises(Interrupt):
        run_search(qa, EVOLUTION, tmp_path, progress=crash_after(30))
    log = tmp_path / LOG_FILE
    first_run = log.read_text().splitlines()
    with open(log, "a") as file:  # the crash cut the next line short
        file.write(first_run[-1][:40])

    frontier = run_search(qa, replace(EVOLUTION, resume=True), tmp_path)
    second_run = log.read_text().splitlines()[len(first_run) :]  # the cut line is gone
    configs = [json.dumps(json.loads(line)["length_config"]) for line in (*first_run, *second_run)]
    assert frontier.search["resumed_trials"] == len(first_run) == 30
    assert len(configs) == len(set(configs)) == frontier.search["evaluations"]  # nothing measured twice
    assert frontier.search["evaluated_now"] == len(second_run)
    assert [(p.length_config, p.f1) for p in frontier.points] == [(p.length_config, p.f1) for p in evolution.points]


def test_resume_reuses_only_points_of_the_same_data_and_refuses_a_broken_log(qa, tmp_path):
    small = replace(EVOLUTION, evolution=EvolutionSettings(population=2, iterations=1, mutations=2, crossovers=2))
    first = run_search(qa, small, tmp_path)
    shorter = replace(
        small, resume=True, evolution=EvolutionSettings(population=1, iterations=1, mutations=0, crossovers=0)
    )
    again = run_search(qa, shorter, tmp_path)  # reaches fewer configurations; the others still count
    assert again.search["evaluated_now"] == 0 and again.search["evaluations"] == first.search["evaluations"]
    assert [p.length_config for p in again.points] == [p.length_config for p in first.points]
    log = tmp_path / LOG_FILE
    other = [json.dumps({**json.loads(line), "data": "other data"}) for line in log.read_text().splitlines()]
    log.write_text("\n".join(other) + "\n")
    assert run_search(qa, replace(small, resume=True), tmp_path).search["resumed_trials"] == 0

    log.write_text("not json\n" + log.read_text())
    with pytest.raises(ValueError, match="line 1 is not a search log entry"):
        run_search(qa, replace(small, resume=True), tmp_path)
    with pytest.raises(ValueError, match="optuna resumes through its study"):
        replace(OPTUNA, resume=True)


def test_a_time_limit_stops_the_search_early_but_still_writes_the_frontier(qa, tmp_path):
    calls = []
    frontier = run_search(qa, replace(EVOLUTION, time_limit=1.0), tmp_path, progress=calls.append)
    assert frontier.search["out_of_time"]
    assert len(calls) < EVOLUTION.budget()
    assert (tmp_path / "pareto.json").is_file() and frontier.full.macs_ratio == 1.0


def test_max_points_spreads_the_saved_frontier_over_cost_and_the_log_keeps_every_config(qa, evolution, tmp_path):
    short = run_search(qa, replace(EVOLUTION, max_points=3), tmp_path)
    assert len(evolution.points) > 3 and len(short.points) == 3
    ends = [p.length_config for p in evolution.points[:: len(evolution.points) - 1]]
    assert [p.length_config for p in short.points[:: len(short.points) - 1]] == ends
    assert len(load_frontier(tmp_path).points) == 3
    log = (tmp_path / "search-log.jsonl").read_text().splitlines()
    logged = {json.dumps(json.loads(line)["length_config"]) for line in log}
    assert len(logged) == evolution.search["evaluations"] > 3


def test_a_time_limit_too_short_for_the_full_model_is_a_clear_error(qa, tmp_path):
    with pytest.raises(ValueError, match="time limit ran out before the full model"):
        run_search(qa, replace(EVOLUTION, time_limit=1e-9), tmp_path)


def test_a_latency_search_trades_f1_for_measured_milliseconds(qa, tmp_path):
    settings = SearchSettings(
        method="evolution",
        cost="latency",
        ratio_step=0.3,
        evolution=EvolutionSettings(population=3, iterations=1, mutations=2, crossovers=2),
        latency_questions=4,
        latency_repeats=1,
    )
    frontier = run_search(qa, settings, tmp_path)
    assert frontier.search["cost"] == "latency"
    points = frontier.points
    assert all(p.latency_ms > 0 for p in [*points, *frontier.baseline])
    assert all(a.latency_ms < b.latency_ms and a.f1 < b.f1 for a, b in zip(points, points[1:]))


# --------------------------------------------------------------------------------------------------
# The plot, the sweep and the command line


def test_the_plot_is_an_image_file(evolution, tmp_path):
    plot_frontier(evolution, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_frontier(evolution, tmp_path / "pareto.svg", cost="latency")
    assert b"<svg" in (tmp_path / "pareto.svg").read_bytes()[:500]


def test_the_sweep_measures_the_constant_keep_ratio_curve(qa):
    points = sweep(qa, SEARCH_DATA, "synthetic seed 3", [1.0, 0.5, 0.2], **OPTIONS)
    assert [p.length_config.values for p in points] == [(1.0,) * 3, (0.5,) * 3, (0.2,) * 3]
    assert points[0].f1 == pytest.approx(evaluate(qa, SEARCH_DATA, **OPTIONS).f1)
    assert points[0].macs_ratio == 1.0 > points[1].macs_ratio > points[2].macs_ratio
    assert all(p.latency_ms is None for p in points)


def two_article_file(path: Path) -> Path:
    """A training file of two articles: 50 questions, then 60 in the last (the held-out one)."""
    first = {**synthetic_dataset(50, seed=4, facts=2, prefix="a").articles[0], "title": "first"}
    last = {**synthetic_dataset(60, seed=5, facts=2, prefix="b").articles[0], "title": "last"}
    path.write_text(json.dumps({"version": "1.1", "data": [first, last]}))
    return path


def test_dtb_search_writes_pareto_json_beside_the_model_and_a_plot(model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    for file in model_dir.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    dev = write_squad_file(DEV, tmp_path / "dev.json")
    code = main(
        ["search", "--model", str(model), "--data", str(two_article_file(tmp_path / "train.json"))]
        + ["--holdout-articles", "1", "--method", "evolution", "--population", "4", "--iterations", "2"]
        + ["--mutations", "4", "--crossovers", "4", "--max-answer-len", "30", "--latency-questions", "4"]
        + ["--eval-data", str(dev), "--eval-limit", "40", "--plot", str(tmp_path / "pareto.png"), "--device", "cpu"]
    )
    out = capsys.readouterr().out
    assert code == 0
    frontier = load_frontier(model)
    assert frontier.full.data == "train.json: last 1 articles (60 questions)"
    assert all(p.evaluations["dev.json (first 40)"]["questions"] == 40 for p in frontier.points)
    assert (tmp_path / "pareto.png").is_file()
    assert "f1 dev.json (first 40)" in out and "1.0,1.0,1.0 full" in out

    assert main(["info", "--model", str(model)]) == 0
    assert "accuracy/cost frontier: evolution search on train.json" in capsys.readouterr().out


def test_dtb_search_with_optuna_resumes_from_the_study_beside_the_model(model_dir, tmp_path, capsys):
    args = [
        "search",
        "--model",
        str(model_dir),
        "--search-data",
        str(write_squad_file(SEARCH_DATA, tmp_path / "s.json")),
    ]
    args += ["--method", "optuna", "--trials", "25", "--output", str(tmp_path / "out"), "--latency-questions", "2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["search"]["resumed_trials"] == 25 and printed["search"]["evaluated_now"] == 0
    assert printed == load_frontier(tmp_path / "out").to_dict()
    assert printed["search"]["precision"] == "fp32"

    assert main([*args, "--precision", "bf16", "--json"]) == 0  # another precision: a new study, not a resume
    printed = json.loads(capsys.readouterr().out)
    assert printed["search"]["precision"] == "bf16" and printed["search"]["resumed_trials"] == 0


def test_dtb_search_start_from_measures_an_earlier_frontier_first(model_dir, tmp_path, capsys):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    configs = [LengthConfig.ratios([0.85, 0.45, 0.35]), LengthConfig.ratios([0.65, 0.6, 0.15])]
    points = [Point(c, f1=50.0, em=40.0, macs=1.0, macs_ratio=0.5, keep_ratios=c.values, data="x") for c in configs]
    Frontier(points=points, full=points[-1]).save(earlier)
    (earlier / "pareto.json").rename(earlier / "earlier-pareto.json")  # a file of any name
    data = write_squad_file(SEARCH_DATA, tmp_path / "s.json")
    args = ["search", "--model", str(model_dir), "--search-data", str(data)]
    args += ["--population", "2", "--iterations", "1", "--mutations", "2", "--crossovers", "2"]
    args += ["--latency-questions", "2", "--output", str(tmp_path / "out")]
    assert main([*args, "--start-from", str(earlier / "earlier-pareto.json")]) == 0
    log = [json.loads(line) for line in (tmp_path / "out" / LOG_FILE).read_text().splitlines()]
    initial = [LengthConfig.from_dict(line["length_config"]) for line in log if line["source"] == "initial"]
    assert set(configs) <= set(initial)
    assert all(line["f1"] != 50.0 for line in log)  # measured here, not copied

    capsys.readouterr()
    assert main([*args, "--start-from", str(tmp_path)]) == 2
    assert "--start-from" in capsys.readouterr().err


def test_dtb_sweep_writes_the_baseline_points(model_dir, tmp_path, capsys):
    data = write_squad_file(SEARCH_DATA, tmp_path / "s.json")
    target = tmp_path / "sweep.json"
    args = ["sweep", "--model", str(model_dir), "--search-data", str(data), "--ratios", "1.0,0.6,0.3"]
    assert main([*args, "--output", str(target)]) == 0
    result = json.loads(target.read_text())
    assert [p["length_config"]["ratios"] for p in result["points"]] == [[1.0] * 3, [0.6] * 3, [0.3] * 3]
    assert "0.6,0.6,0.6" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--holdout-articles", "0"], "holdout_articles must be >= 1"),
        (["--time-limit", "soon"], "not a duration"),
        (["--method", "grid"], "invalid choice"),
        (["--max-points", "1"], "max_points must be >= 2"),
        (["--ratios", "1.5"], None),
        (["--device", "tpu"], "argument --device: device must be cpu or cuda"),
    ],
)
def test_dtb_search_rejects_bad_arguments_in_one_line(model_dir, tmp_path, capsys, extra, message):
    data = str(two_article_file(tmp_path / "train.json"))
    command = "sweep" if message is None else "search"
    code = main([command, "--model", str(model_dir), "--data", data, "--output", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert message is None or message in err
