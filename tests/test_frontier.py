"""The accuracy/cost frontier (`pareto.json`) and choosing a length config from it by a MACs or latency budget.

Frontiers are built by hand here (no search): three points on the tiny 3-layer model, cheapest first, plus
the full model. A budget of 0.6 picks MID; latencies, where measured, are 1 ms (CHEAP) and 3 ms (TOP).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import LengthConfig, QuestionAnswerer, cli
from dynamic_tinybert.evaluate import Evaluator, evaluate
from dynamic_tinybert.frontier import (
    BudgetError,
    Frontier,
    Latency,
    Point,
    load_frontier,
    pareto_front,
    require_frontier,
    spread,
)
from dynamic_tinybert.latency import calibrate

from conftest import tiny_config

LAYERS = tiny_config().num_hidden_layers
QUESTIONS = ["where does alice live ?", "who lives in paris ?"]
CONTEXTS = ["carol lives in rome . alice lives in oslo . bob lives in paris ."] * 2


def point(macs_ratio: float, f1: float, ratios: tuple[float, ...] | None = None, latency_ms=None) -> Point:
    ratios = ratios or (macs_ratio,) * LAYERS
    return Point(
        length_config=LengthConfig.ratios(ratios),
        f1=f1,
        em=f1 - 10,
        macs=round(macs_ratio * 1_000_000),
        macs_ratio=macs_ratio,
        keep_ratios=ratios,
        data="synthetic (8 questions)",
        latency=None if latency_ms is None else Latency(latency_ms, tokens=None),
        latency_batch_size=None if latency_ms is None else 8,
    )


CHEAP = point(0.3, 40.0, (0.5, 0.3, 0.2))
MID = point(0.55, 60.0, (0.8, 0.6, 0.4))
TOP = point(0.8, 70.0, (1.0, 0.9, 0.7))
FULL = point(1.0, 72.0, (1.0, 1.0, 1.0))
FRONTIER = Frontier([CHEAP, MID, TOP], FULL, search={"method": "evolution", "seed": 0})
TIMED = Frontier(
    [CHEAP.with_latency(Latency(1.0, 20.0), 8), MID, TOP.with_latency(Latency(3.0, 20.0), 8)],
    FULL.with_latency(Latency(4.0, 20.0), 8),
)


@pytest.fixture
def frontier_dir(tiny_checkpoint: Path) -> Path:
    """The tiny random checkpoint with FRONTIER saved beside it."""
    FRONTIER.save(tiny_checkpoint)
    return tiny_checkpoint


@pytest.fixture
def timed_dir(tiny_checkpoint: Path) -> Path:
    """The tiny random checkpoint with TIMED (latencies for CHEAP and TOP only) saved beside it."""
    TIMED.save(tiny_checkpoint)
    return tiny_checkpoint


def answers(qa: QuestionAnswerer, **options) -> list[list[dict]]:
    return qa.run(QUESTIONS, CONTEXTS, top_k=3, **options).answers


# --- pareto_front ------------------------------------------------------------------------------------------------


def test_pareto_front_drops_dominated_points_and_sorts_by_cost_with_strictly_increasing_f1():
    cheap, worse_and_dearer, good, as_good_but_dearer, best = (
        point(0.3, 40.0),
        point(0.5, 35.0),
        point(0.6, 60.0),
        point(0.9, 60.0),
        point(0.95, 65.0),
    )
    front = pareto_front([best, as_good_but_dearer, worse_and_dearer, good, cheap])
    assert front == [cheap, good, best]


def test_pareto_front_keeps_the_more_accurate_of_equal_cost_points_and_the_first_of_equal_ones():
    worse, better, same_as_better = point(0.5, 50.0), point(0.5, 55.0), point(0.5, 55.0)
    [kept] = pareto_front([worse, better, same_as_better])
    assert kept is better


def test_pareto_front_with_latency_as_the_cost():
    slow_but_few_macs = point(0.3, 40.0, latency_ms=5.0)
    fast_and_accurate = point(0.6, 60.0, latency_ms=2.0)
    points = [slow_but_few_macs, fast_and_accurate]
    assert pareto_front(points) == [slow_but_few_macs, fast_and_accurate]
    assert pareto_front(points, cost=lambda p: p.latency_ms) == [fast_and_accurate]


# --- to_dict / from_dict, save, load_frontier --------------------------------------------------------------------


def test_point_round_trips_through_a_dict_with_latency_and_evaluations():
    timed = CHEAP.with_latency(Latency(1.25, 150.5, 0.0125), 16)
    evaluated = replace(timed, evaluations={"dev-v1.1.json": {"f1": 38.5, "exact_match": 30.0}})
    data = json.loads(json.dumps(evaluated.to_dict()))
    assert Point.from_dict(data) == evaluated
    assert (data["latency_ms"], data["latency_batch_size"]) == (1.25, 16)
    assert (data["latency_tokens"], data["latency_ms_per_token"]) == (150.5, 0.0125)
    assert "latency_ms" not in CHEAP.to_dict() and "evaluations" not in CHEAP.to_dict()


@pytest.mark.parametrize("frontier", [FRONTIER, TIMED], ids=["macs-only", "timed"])
def test_frontier_round_trips_through_a_dict(frontier: Frontier):
    assert Frontier.from_dict(json.loads(json.dumps(frontier.to_dict()))) == frontier


def test_save_writes_pareto_json_that_loads_back_equal_and_leaves_no_temporary_file(tmp_path: Path):
    TIMED.save(tmp_path)
    path = FRONTIER.save(tmp_path)  # replaces the first
    assert path == tmp_path / "pareto.json"
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.json"]
    assert load_frontier(tmp_path) == FRONTIER
    assert require_frontier(tmp_path) == FRONTIER


def test_load_frontier_without_pareto_json_is_none_and_require_frontier_says_to_search(tmp_path: Path):
    assert load_frontier(tmp_path) is None
    with pytest.raises(BudgetError, match="no accuracy/cost frontier.*`dtb search`"):
        require_frontier(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"frontier": []}),  # no "full"
        json.dumps({**FRONTIER.to_dict(), "frontier": [{**MID.to_dict(), "f1": "high"}]}),
        json.dumps({**FRONTIER.to_dict(), "frontier": [{**MID.to_dict(), "length_config": {"ratios": [0.2, 0.9]}}]}),
    ],
    ids=["not-json", "a-list", "no-full", "f1-not-a-number", "increasing-length-config"],
)
def test_an_invalid_frontier_file_is_a_budget_error_naming_the_file(tmp_path: Path, content: str):
    (tmp_path / "pareto.json").write_text(content)
    with pytest.raises(BudgetError, match=f"{tmp_path / 'pareto.json'}: not a valid frontier file"):
        load_frontier(tmp_path)


def test_a_frontier_file_without_points_is_a_budget_error_naming_the_file(tmp_path: Path):
    Frontier([], FULL).save(tmp_path)
    with pytest.raises(BudgetError, match=f"{tmp_path / 'pareto.json'}: the frontier has no points"):
        load_frontier(tmp_path)


# --- Frontier.choose ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget,expected",
    [(0.3, CHEAP), (0.5, CHEAP), (0.55, MID), (0.6, MID), (0.8, TOP), (1.0, TOP), (1, TOP)],
    ids=["cheapest-exactly", "between-cheap-and-mid", "mid-exactly", "between-mid-and-top", "top-exactly", "1.0", "1"],
)
def test_choose_by_budget_picks_the_most_accurate_point_within_it(budget, expected: Point):
    assert FRONTIER.choose(budget=budget) == expected


def test_choose_by_budget_prefers_accuracy_over_cost_among_the_points_that_fit():
    unsorted = Frontier([TOP, CHEAP, MID], FULL)
    assert unsorted.choose(budget=0.9) == TOP
    assert unsorted.choose(budget=0.6) == MID


@pytest.mark.parametrize(
    "latency_ms,expected", [(1.0, CHEAP), (2.5, CHEAP), (3.0, TOP), (100, TOP)], ids=["1", "2.5", "3", "100"]
)
def test_choose_by_latency_picks_among_the_points_with_measured_latency(latency_ms, expected: Point):
    # MID has no latency, so 2.5 ms cannot pick it even though its MACs lie between CHEAP's and TOP's
    assert TIMED.choose(latency_ms=latency_ms).length_config == expected.length_config


@pytest.mark.parametrize(
    "choice,message",
    [
        (dict(), "exactly one of budget"),
        (dict(budget=0.5, latency_ms=2.0), "exactly one of budget"),
        (dict(budget=0), r"budget must be .* in \(0, 1\], got 0"),
        (dict(budget=-0.5), r"in \(0, 1\], got -0.5"),
        (dict(budget=1.01), r"in \(0, 1\], got 1.01"),
        (dict(budget=math.nan), r"in \(0, 1\], got nan"),
        (dict(budget=math.inf), r"in \(0, 1\], got inf"),
        (dict(budget=True), r"in \(0, 1\], got True"),
        (dict(budget="0.5"), r"in \(0, 1\], got '0.5'"),
        (dict(budget=0.29), r"budget 0.29 is below the cheapest point of the frontier \(0.300 of the full MACs\)"),
        (dict(latency_ms=0), "latency_ms must be a positive number of milliseconds, got 0"),
        (dict(latency_ms=math.nan), "latency_ms must be a positive number of milliseconds, got nan"),
        (dict(latency_ms=2.0), "no measured latencies; run `dtb search --cost latency`"),
    ],
    ids=[
        "neither",
        "both",
        "zero",
        "negative",
        "above-1",
        "nan",
        "inf",
        "bool",
        "string",
        "below-cheapest",
        "latency-zero",
        "latency-nan",
        "latency-unmeasured",
    ],
)
def test_choose_refuses_a_budget_it_cannot_meet_with_a_message_naming_the_problem(choice: dict, message: str):
    with pytest.raises(BudgetError, match=message):
        FRONTIER.choose(**choice)


def test_choose_by_a_latency_below_the_fastest_point_names_the_fastest():
    with pytest.raises(BudgetError, match=r"latency_ms 0.5 is below the fastest frontier point \(1.00 ms"):
        TIMED.choose(latency_ms=0.5)


# --- QuestionAnswerer --------------------------------------------------------------------------------------------


def test_from_pretrained_loads_the_frontier_saved_beside_the_model(frontier_dir: Path):
    assert QuestionAnswerer.from_pretrained(frontier_dir).frontier == FRONTIER


def test_a_default_budget_answers_as_the_chosen_length_config_does(frontier_dir: Path):
    plain = QuestionAnswerer.from_pretrained(frontier_dir)
    budgeted = QuestionAnswerer.from_pretrained(frontier_dir, budget=0.6)
    assert answers(budgeted) == answers(plain, length_config=MID.length_config) != answers(plain)


def test_a_default_latency_answers_as_the_chosen_length_config_does(timed_dir: Path):
    plain = QuestionAnswerer.from_pretrained(timed_dir)
    timed = QuestionAnswerer.from_pretrained(timed_dir, latency_ms=2.5)
    assert answers(timed) == answers(plain, length_config=CHEAP.length_config) != answers(plain)


def test_a_calls_budget_replaces_a_default_length_config(frontier_dir: Path):
    plain = QuestionAnswerer.from_pretrained(frontier_dir)
    qa = QuestionAnswerer.from_pretrained(frontier_dir, length_config=TOP.length_config)
    assert answers(qa, budget=0.35) == answers(plain, length_config=CHEAP.length_config)
    assert answers(qa) == answers(plain, length_config=TOP.length_config) != answers(plain, budget=0.35)


def test_a_calls_length_config_replaces_a_default_budget(frontier_dir: Path):
    plain = QuestionAnswerer.from_pretrained(frontier_dir)
    qa = QuestionAnswerer.from_pretrained(frontier_dir, budget=0.35)
    assert answers(qa, length_config=TOP.length_config) == answers(plain, length_config=TOP.length_config)
    assert answers(qa, length_config=None) == answers(plain)
    assert answers(qa) == answers(plain, length_config=CHEAP.length_config)


def test_a_length_config_and_a_budget_together_are_refused(frontier_dir: Path):
    qa = QuestionAnswerer.from_pretrained(frontier_dir)
    with pytest.raises(ValueError, match="give only one of length_config, budget and latency_ms"):
        qa.run(QUESTIONS, CONTEXTS, length_config=TOP.length_config, budget=0.6)
    with pytest.raises(ValueError, match="length_config and budget"):
        QuestionAnswerer.from_pretrained(frontier_dir, length_config=TOP.length_config, budget=0.6)


def test_a_budget_on_a_model_without_a_frontier_says_to_run_dtb_search(tiny_checkpoint: Path):
    with pytest.raises(BudgetError, match="no accuracy/cost frontier.*run `dtb search`"):
        QuestionAnswerer.from_pretrained(tiny_checkpoint, budget=0.5)
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    with pytest.raises(BudgetError, match="run `dtb search`"):
        qa.run(QUESTIONS, CONTEXTS, budget=0.5)


def test_a_default_budget_below_the_cheapest_point_fails_at_construction(frontier_dir: Path):
    with pytest.raises(BudgetError, match=r"below the cheapest point of the frontier \(0.300"):
        QuestionAnswerer.from_pretrained(frontier_dir, budget=0.1)


# --- evaluate ----------------------------------------------------------------------------------------------------


def test_evaluate_with_a_budget_reports_the_chosen_config_and_its_macs(frontier_dir: Path):
    qa, dataset = QuestionAnswerer.from_pretrained(frontier_dir), synthetic_dataset(6, seed=1)
    by_budget = evaluate(qa, dataset, budget=0.6)
    explicit = evaluate(qa, dataset, length_config=MID.length_config)
    assert by_budget.length_config == MID.length_config
    assert by_budget.mean_macs == explicit.mean_macs < by_budget.mean_full_macs
    assert by_budget.predictions == explicit.predictions


def test_evaluate_with_a_latency_reports_the_chosen_config(timed_dir: Path):
    qa = QuestionAnswerer.from_pretrained(timed_dir)
    assert evaluate(qa, synthetic_dataset(4, seed=2), latency_ms=2.5).length_config == CHEAP.length_config


def test_evaluate_with_a_length_config_and_a_budget_is_refused(frontier_dir: Path):
    qa = QuestionAnswerer.from_pretrained(frontier_dir)
    with pytest.raises(ValueError, match="only one of length_config, budget"):
        evaluate(qa, synthetic_dataset(2, seed=3), length_config=TOP.length_config, budget=0.6)


def test_evaluate_runs_the_answerers_default_budget_and_reports_it(frontier_dir: Path):
    qa = QuestionAnswerer.from_pretrained(frontier_dir, budget=0.6)
    assert evaluate(qa, synthetic_dataset(4, seed=2)).length_config == MID.length_config


def test_an_evaluator_takes_the_length_config_per_call_not_as_an_option(frontier_dir: Path):
    qa = QuestionAnswerer.from_pretrained(frontier_dir)
    with pytest.raises(ValueError, match="per call"):
        Evaluator(qa, synthetic_dataset(2, seed=3), budget=0.6)


# --- the command line --------------------------------------------------------------------------------------------


def dtb(capsys: pytest.CaptureFixture, *args) -> tuple[int, str, str]:
    """Run `dtb ARGS...` in-process; return its exit code, stdout and stderr."""
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ask_json(capsys: pytest.CaptureFixture, model: Path, *options) -> dict:
    code, out, err = dtb(capsys, "ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", model, "--json", *options)
    assert (code, err) == (0, "")
    return json.loads(out)


def assert_usage_error(result: tuple[int, str, str], *fragments: str) -> None:
    """Exit code 2 and exactly one line on stderr, "error: ...", containing every fragment."""
    code, _, err = result
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("error:")
    for fragment in fragments:
        assert fragment in line


def test_ask_with_a_budget_answers_as_the_chosen_length_config_does(capsys, frontier_dir: Path):
    by_budget = ask_json(capsys, frontier_dir, "--budget", 0.6, "--top-k", 3)
    explicit = ask_json(capsys, frontier_dir, "--length-config", str(MID.length_config), "--top-k", 3)
    assert by_budget == explicit != ask_json(capsys, frontier_dir, "--top-k", 3)


def test_ask_with_a_latency_answers_as_the_chosen_length_config_does(capsys, timed_dir: Path):
    by_latency = ask_json(capsys, timed_dir, "--latency-ms", 2.5, "--top-k", 3)
    assert by_latency == ask_json(capsys, timed_dir, "--length-config", str(CHEAP.length_config), "--top-k", 3)


def test_ask_with_a_budget_and_a_length_config_is_a_usage_error(capsys, frontier_dir: Path):
    args = ("ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", frontier_dir)
    result = dtb(capsys, *args, "--budget", 0.6, "--length-config", str(TOP.length_config))
    assert_usage_error(result, "--budget", "not allowed with", "--length-config")


@pytest.mark.parametrize(
    "budget,fragments",
    [("0.01", ["budget 0.01", "cheapest", "0.300"]), ("1.5", ["(0, 1]", "1.5"]), ("nan", ["(0, 1]", "nan"])],
    ids=["below-cheapest", "above-1", "nan"],
)
def test_ask_with_a_budget_the_frontier_cannot_meet_is_a_usage_error(capsys, frontier_dir: Path, budget, fragments):
    result = dtb(capsys, "ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", frontier_dir, "--budget", budget)
    assert_usage_error(result, *fragments)


def test_ask_with_a_latency_on_a_frontier_without_latencies_is_a_usage_error(capsys, frontier_dir: Path):
    result = dtb(capsys, "ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", frontier_dir, "--latency-ms", 5)
    assert_usage_error(result, "no measured latencies", "dtb search --cost latency")


def test_ask_with_a_budget_on_a_model_without_a_frontier_is_a_usage_error(capsys, tiny_checkpoint: Path):
    result = dtb(capsys, "ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", tiny_checkpoint, "--budget", 0.6)
    assert_usage_error(result, "pareto.json", "dtb search")


def test_eval_with_a_budget_reports_the_chosen_length_config_and_its_macs(capsys, frontier_dir: Path, tmp_path: Path):
    data = write_squad_file(synthetic_dataset(4, seed=4), tmp_path / "synthetic.json")
    args = ("eval", "--model", frontier_dir, "--data", data, "--predictions", tmp_path / "p.json", "--json")
    code, out, err = dtb(capsys, *args, "--budget", 0.6)
    assert (code, err) == (0, "")
    by_budget = json.loads(out)
    explicit = json.loads(dtb(capsys, *args, "--length-config", str(MID.length_config))[1])
    assert by_budget["length_config"] == str(MID.length_config) == "0.8,0.6,0.4"
    assert by_budget["mean_macs"] == explicit["mean_macs"]
    assert by_budget["macs_ratio_to_full_length"] < 1


def test_info_prints_the_frontier_table_with_the_full_model_last(capsys, timed_dir: Path):
    code, out, _ = dtb(capsys, "info", "--model", timed_dir)
    assert code == 0
    lines = out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("macs_ratio")) :]
    assert table[0].split() == ["macs_ratio", "latency_ms", "f1", "em", "length_config"]
    assert [row.split() for row in table[1:]] == [
        ["0.300", "1.00", "40.00", "30.00", "0.5,0.3,0.2"],
        ["0.550", "-", "60.00", "50.00", "0.8,0.6,0.4"],
        ["0.800", "3.00", "70.00", "60.00", "1.0,0.9,0.7"],
        ["1.000", "4.00", "72.00", "62.00", "1.0,1.0,1.0", "full"],
    ]


def test_info_names_the_search_that_found_the_frontier(capsys, frontier_dir: Path):
    out = dtb(capsys, "info", "--model", frontier_dir)[1]
    assert "accuracy/cost frontier: evolution search on synthetic (8 questions)" in out


def test_info_without_pareto_json_says_there_is_no_frontier(capsys, tiny_checkpoint: Path):
    code, out, _ = dtb(capsys, "info", "--model", tiny_checkpoint)
    assert code == 0
    assert "no accuracy/cost frontier" in out
    assert "macs_ratio" not in out


def test_info_json_includes_the_frontier_or_null(capsys, tiny_checkpoint: Path):
    assert json.loads(dtb(capsys, "info", "--model", tiny_checkpoint, "--json")[1])["frontier"] is None
    FRONTIER.save(tiny_checkpoint)
    printed = json.loads(dtb(capsys, "info", "--model", tiny_checkpoint, "--json")[1])["frontier"]
    assert printed == FRONTIER.to_dict()
    assert Frontier.from_dict(printed) == FRONTIER


# --- calibration: latencies measured on this machine ----------------------------------------------------------------


def test_calibrate_measures_every_point_here_so_that_latency_budgets_work(frontier_dir: Path):
    qa = QuestionAnswerer.from_pretrained(frontier_dir)
    with pytest.raises(BudgetError, match="no measured latencies"):
        qa(question=QUESTIONS[0], context=CONTEXTS[0], latency_ms=1000.0)
    calibrated = calibrate(qa, QUESTIONS, CONTEXTS, batch_size=1, repeats=1)
    assert qa.frontier is calibrated
    assert all(p.latency_ms > 0 and p.latency_batch_size == 1 for p in [*calibrated.points, calibrated.full])
    assert [p.length_config for p in calibrated.points] == [CHEAP.length_config, MID.length_config, TOP.length_config]
    assert qa.length_config_for(qa.options(latency_ms=1e6)) == TOP.length_config


def test_calibrate_without_a_frontier_is_a_clear_error(tiny_checkpoint: Path):
    with pytest.raises(BudgetError, match="no accuracy/cost frontier"):
        calibrate(QuestionAnswerer.from_pretrained(tiny_checkpoint), QUESTIONS, CONTEXTS)


def test_dtb_calibrate_writes_the_latencies_into_pareto_json(frontier_dir: Path, tmp_path: Path, capsys):
    data = write_squad_file(synthetic_dataset(6, seed=4), tmp_path / "data.json")
    args = ["calibrate", "--model", str(frontier_dir), "--data", str(data), "--limit", "3", "--repeats", "1"]
    assert cli.main(args) == 0
    assert "latencies of 3 frontier points" in capsys.readouterr().out
    frontier = load_frontier(frontier_dir)
    assert all(p.latency_ms > 0 for p in frontier.points)
    assert frontier.search["calibrated"] == {"questions": 3, "batch_size": 1, "precision": "fp32", "engine": "torch"}
    ask = ["ask", QUESTIONS[0], "--context", CONTEXTS[0], "--model", str(frontier_dir), "--latency-ms", "1e6"]
    assert cli.main(ask) == 0


def test_dtb_calibrate_without_a_frontier_is_a_one_line_error(tiny_checkpoint: Path, tmp_path: Path, capsys):
    data = write_squad_file(synthetic_dataset(2, seed=4), tmp_path / "data.json")
    assert cli.main(["calibrate", "--model", str(tiny_checkpoint), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "dtb search" in err and len(err.strip().splitlines()) == 1


def test_spread_keeps_the_ends_and_points_nearest_to_even_costs():
    front = [point(c, 50 + 40 * c) for c in (0.2, 0.21, 0.22, 0.4, 0.41, 0.6, 0.79, 0.8, 1.0)]
    kept = spread(front, 4)
    assert [p.macs_ratio for p in kept] == [0.2, 0.41, 0.79, 1.0]  # targets 0.2, 0.467, 0.733, 1.0
    assert [p.macs_ratio for p in spread(front, 2)] == [0.2, 1.0]
    assert spread(front, 9) == front and spread(front, 50) == front
    assert len(spread(front, 8)) == 8 and pareto_front(spread(front, 8)) == spread(front, 8)


@pytest.mark.parametrize("bad", [1, 0, -3])
def test_spread_needs_room_for_both_ends(bad):
    with pytest.raises(ValueError, match="max_points must be >= 2"):
        spread([point(0.5, 60), point(1.0, 70)], bad)


# --- latency that grows with length: a budget holds at the request's own length ------------------------------------

# CHEAP costs 2 ms at any length; TOP 3 ms at 100 tokens per question and 0.02 ms more per token.
BY_LENGTH = Frontier(
    [CHEAP.with_latency(Latency(2.0, 100.0, 0.0), 1), TOP.with_latency(Latency(3.0, 100.0, 0.02), 1)],
    FULL.with_latency(Latency(4.0, 100.0, 0.03), 1),
)


def test_a_point_predicts_its_latency_along_its_line_and_old_files_stay_flat():
    top = BY_LENGTH.points[1]
    assert top.latency_at(None) == 3.0 and top.latency_at(150) == pytest.approx(4.0)
    assert top.latency_at(0) == pytest.approx(1.0)
    written_before = {k: v for k, v in top.to_dict().items() if k not in ("latency_tokens", "latency_ms_per_token")}
    flat = Point.from_dict(written_before)
    assert flat.latency_at(150) == flat.latency_at(10) == 3.0  # a pareto.json written before lengths counted


@pytest.mark.parametrize("tokens,expected", [(None, TOP), (100, TOP), (125, TOP), (151, CHEAP)])
def test_choose_by_latency_predicts_at_the_requests_length(tokens, expected: Point):
    assert BY_LENGTH.choose(latency_ms=3.5, tokens=tokens).length_config == expected.length_config


def test_a_latency_below_every_point_at_this_length_names_the_length():
    with pytest.raises(BudgetError, match=r"fastest frontier point \(2.00 ms per question of 400 tokens\)"):
        BY_LENGTH.choose(latency_ms=1.5, tokens=400)


def test_a_latency_budget_in_a_call_is_met_at_that_calls_length(tiny_checkpoint: Path):
    BY_LENGTH.save(tiny_checkpoint)
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    assert qa.length_config_for(qa.options(latency_ms=3.5), tokens_per_question=80) == TOP.length_config
    assert qa.length_config_for(qa.options(latency_ms=3.5), tokens_per_question=200) == CHEAP.length_config
    plain = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    short, long = CONTEXTS[0], " ".join([CONTEXTS[0]] * 8)  # about 20 and about 130 real tokens
    assert plain.windows([QUESTIONS[0]], [long])[0].length > 125 > plain.windows([QUESTIONS[0]], [short])[0].length
    for context, expected in ((short, TOP), (long, CHEAP)):
        by_latency = qa(question=QUESTIONS[0], context=context, latency_ms=3.5, top_k=3)
        explicit = plain(question=QUESTIONS[0], context=context, length_config=expected.length_config, top_k=3)
        assert by_latency == explicit


def test_a_default_latency_budget_is_checked_against_each_requests_length(tiny_checkpoint: Path):
    BY_LENGTH.save(tiny_checkpoint)
    qa = QuestionAnswerer.from_pretrained(tiny_checkpoint, latency_ms=1.5)  # only TOP fits, under 25 tokens
    plain = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    short = CONTEXTS[0]
    assert qa(question=QUESTIONS[0], context=short) == plain(
        question=QUESTIONS[0], context=short, length_config=TOP.length_config
    )
    with pytest.raises(BudgetError, match=r"fastest frontier point \(2.00 ms per question of \d+ tokens\)"):
        qa(question=QUESTIONS[0], context=" ".join([short] * 8))
