"""The scripts in bench/ and experiments/ record how each result was made: every OUTPUT.json carries its
provenance (date, git commit, model sha256, CPU model and flags, torch version) and every OUTPUT.md says it
beneath its title. The model is the tiny random checkpoint; its answers are meaningless.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset, write_squad_file
from test_frontier import TIMED

from dynamic_tinybert.benchmark.provenance import provenance_line
from dynamic_tinybert.benchmark.results import write_result

ROOT = Path(__file__).resolve().parents[1]


def check_provenance(found: dict, model_dir: Path | None) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", found["git_commit"])  # the tests run in a git checkout
    expected = None if model_dir is None else hashlib.sha256((model_dir / "model.safetensors").read_bytes())
    assert found["model_sha256"] == (None if expected is None else expected.hexdigest())
    assert found["machine"]["cpu"] and isinstance(found["machine"]["cpu_flags"], list)
    assert found["versions"]["torch"] == torch.__version__
    assert found["date"]


@pytest.mark.parametrize(
    "script, args, title",
    [
        ("bench/squad_dev.py", ["--limit", "4"], True),  # maintained; its table has a title
        ("experiments/answer_survival.py", ["--config", "0.5,0.3,0.1"], False),  # research; a bare table
        ("experiments/int8_layers.py", ["--limit", "4"], False),
    ],
)
def test_a_script_records_its_provenance_in_the_json_and_the_markdown(tiny_checkpoint, tmp_path, script, args, title):
    data = write_squad_file(synthetic_dataset(4, seed=2), tmp_path / "dev.json")
    output = tmp_path / "result"
    command = [sys.executable, script, "--model", str(tiny_checkpoint), "--data", str(data), "--threads", "1"]
    run = subprocess.run([*command, *args, "--output", str(output)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(output.with_suffix(".json").read_text())["provenance"]
    check_provenance(found, tiny_checkpoint)
    lines = output.with_suffix(".md").read_text().splitlines()
    assert lines[2 if title else 0] == provenance_line(found)


def test_frontier_configs_scores_every_model_under_every_frontier_configuration(tiny_checkpoint, tmp_path):
    """Two models, one with a frontier: both are scored at full length and under each of its points."""
    TIMED.save(tiny_checkpoint)
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    (other / "pareto.json").unlink()
    data = write_squad_file(synthetic_dataset(6, seed=2), tmp_path / "train.json")
    output = tmp_path / "result"
    command = [sys.executable, "experiments/frontier_configs.py", "--models", f"{tiny_checkpoint},{other}"]
    command += ["--data", str(data), "--holdout-articles", "0", "--threads", "1", "--output", str(output)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.with_suffix(".json").read_text())
    assert result["questions"] == 6
    expected = {"full"} | {str(point.length_config) for point in TIMED.points}
    assert set(result["scores"]) == expected
    for scores in result["scores"].values():
        assert set(scores) == {str(tiny_checkpoint), str(other)}
        assert all(0 <= s["f1"] <= 100 and 0 < s["macs_ratio"] <= 1 for s in scores.values())
    assert result["scores"]["full"][str(other)]["macs_ratio"] == 1.0
    check_provenance(result["provenance"], tiny_checkpoint)


def test_write_result_puts_the_line_beneath_the_title_and_keeps_the_data(tmp_path):
    md, js = write_result(tmp_path / "out" / "r", "# Title\n\n| a |\n|---|\n| 1 |\n", {"rows": [1]})
    data = json.loads(js.read_text())
    assert data["rows"] == [1]
    check_provenance(data["provenance"], None)
    assert md.read_text() == f"# Title\n\n{provenance_line(data['provenance'])}\n\n| a |\n|---|\n| 1 |\n"


@pytest.mark.slow  # three servers started, each loading a model: 10-30 s
def test_serve_load_runs_tiny_against_the_server_and_writes_every_scenario_and_verdict(tiny_checkpoint, tmp_path):
    TIMED.save(tiny_checkpoint)  # a frontier with latencies, for the server that holds an SLO to choose from
    data = write_squad_file(synthetic_dataset(8, seed=2), tmp_path / "dev.json")
    output = tmp_path / "load"
    sizes = ["--clients", "2", "--requests", "12", "--sequential-requests", "4", "--open-requests", "8"]
    command = [sys.executable, "bench/serve_load.py", "--model", str(tiny_checkpoint), "--data", str(data)]
    command += [*sizes, "--max-context-chars", "1000", "--duration-s", "30", "--threads", "1", "--output", str(output)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.with_suffix(".json").read_text())
    check_provenance(result["provenance"], tiny_checkpoint)
    assert result["command"].startswith("python bench/serve_load.py --model")
    scenarios = {s["name"]: s for s in result["scenarios"]}
    assert list(scenarios) == [
        "sequential",
        "one at a time",
        "batched",
        "batched + maximal request",
        "full length, open loop",
        "SLO, open loop",
    ]
    assert scenarios["one at a time"]["requests"] == 12 and scenarios["one at a time"]["5xx"] == 0
    for scenario in scenarios.values():
        assert {"ok", "4xx", "5xx", "shed_503", "throughput_rps", "latency_ms", "f1_served"} <= scenario.keys()
        assert scenario["ok"] + scenario["shed_503"] == scenario["requests"]  # answered, or shed to hold the SLO
        assert {"p50", "p95", "p99"} == scenario["latency_ms"].keys()
    verdicts = result["verdicts"]
    assert {"throughput", "slo", "head_of_line", "rss"} <= verdicts.keys()
    assert verdicts["throughput"]["ratio"] > 0 and verdicts["slo"]["slo_ms"] > 0
    assert verdicts["head_of_line"]["maximal_statuses"] == {"200": verdicts["head_of_line"]["maximal_requests"]}
    assert [s["name"] for s in result["servers"]] == ["one-at-a-time", "batched", "batched with SLO"]
    assert all(s["rss"]["peak_mib"] > 0 for s in result["servers"])


@pytest.mark.slow
def test_open_book_runs_end_to_end_on_the_samples_and_records_its_provenance(tmp_path):
    """bench/open_book.py on the committed SQuAD samples (the v2.0 sample standing in for training data) with
    the shipped model, a few questions each: every section of its result is there."""
    data = ROOT / "tests" / "data"
    output = tmp_path / "open-book"
    command = [sys.executable, "bench/open_book.py", "--dev", data / "dev-v1.1-sample.json.gz"]
    command += ["--dev-v2", data / "dev-v2.0-sample.json.gz", "--train", data / "dev-v2.0-sample.json.gz"]
    command += ["--reader-limit", "6", "--fit-limit", "12", "--v2-limit", "6", "--ks", "1,2", "--budgets", "0.7"]
    command += ["--threads", "1", "--output", output]
    run = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(output.with_suffix(".json").read_text())
    assert [row["k"] for row in result["reader"]["rows"]] == [1, 2, 1, 2]
    assert {"recall@1", "recall@2"} <= result["retrieval"].keys() and result["v2"]["questions"] == 6
    check_provenance(result["provenance"], ROOT / "src" / "dynamic_tinybert" / "models" / "dynamic-minilm-l6-squad")
