"""The side-by-side speed benchmark: system names, rows scored like `dtb eval`, the headline, the written
table/JSON/plot, one process per system, and the competitors giving the project's answers at full length
(ONNX Runtime and OpenVINO in fp32; their int8 and bf16 systems run and say so).

The model is the tiny random 3-layer checkpoint with a hand-made three-point frontier; its answers are
meaningless, which is enough to check that every system answers alike.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import AnswerOptions, LengthConfig, QuestionAnswerer, cli
from dynamic_tinybert.benchmark import (
    INSTALL_HINT,
    System,
    Workload,
    build,
    check_dependencies,
    int8_config,
    markdown,
    onnx_export,
    onnx_int8,
    openvino_export,
    parse_systems,
    run_benchmark,
    summary,
    write_results,
)
from dynamic_tinybert.benchmark.provenance import provenance_line
from dynamic_tinybert.evaluate import evaluate
from dynamic_tinybert.frontier import Frontier, Point

DATA = synthetic_dataset(12, seed=1)
QUESTIONS, CONTEXTS = [q.question for q in DATA.questions], [q.context for q in DATA.questions]


def point(ratios: tuple[float, ...], f1: float) -> Point:
    config = LengthConfig.ratios(ratios)
    return Point(config, f1, f1 - 10, macs=1e6 * min(ratios), macs_ratio=min(ratios), keep_ratios=ratios, data="x")


FRONTIER = Frontier(
    [point((0.5, 0.3, 0.2), 40), point((0.8, 0.6, 0.4), 60), point((1.0, 0.9, 0.7), 70)], point((1.0,) * 3, 72)
)
OPTIONS = AnswerOptions(max_answer_len=30, max_seq_len=128, doc_stride=64, max_question_len=64)


@pytest.fixture
def model_dir(tiny_checkpoint: Path) -> Path:
    FRONTIER.save(tiny_checkpoint)
    return tiny_checkpoint


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the module: every test's tiny checkpoint is the same seeded model, exported once."""
    return tmp_path_factory.mktemp("exports")


def answers_of(system: System, model_dir: Path, **exported: Path) -> list[str]:
    work = Workload(model_dir, QUESTIONS, CONTEXTS, OPTIONS, 1, 0, **exported)
    return build(system, work).answer(QUESTIONS, CONTEXTS)


# --- naming systems ----------------------------------------------------------------------------------------------


def test_system_names_give_kind_precision_batch_size_and_frontier_points():
    systems = parse_systems(
        [
            "project",
            "project:int8@1",
            "project:frontier@8",
            "project:frontier1:bf16",
            "project:frontier2:int8:onnxruntime@1",
            "project:torch:int8@4",
            "transformers@1",
            "transformers:bf16@64",
        ],
        FRONTIER,
    )
    assert [s.name for s in systems] == [
        "project@32",
        "project:int8@1",
        "project:frontier0@8",
        "project:frontier1@8",
        "project:frontier2@8",
        "project:frontier1:bf16@32",
        "project:frontier2:int8:onnxruntime@1",
        "project:int8:torch@4",
        "transformers@1",
        "transformers:bf16@64",
    ]
    assert systems[-1].precision == "bf16"
    assert systems[3].length_config == FRONTIER.points[1].length_config
    assert [s.engine for s in systems[5:8]] == ["auto", "onnxruntime", "torch"]
    assert parse_systems([s.name for s in systems], FRONTIER) == systems


def test_peers_take_a_precision_and_openvino_without_one_runs_in_its_own():
    systems = parse_systems(["openvino", "openvino:fp32@1", "onnxruntime:int8@2", "onnxruntime:fp32@1"], None)
    assert [s.name for s in systems] == ["openvino@32", "openvino:fp32@1", "onnxruntime:int8@2", "onnxruntime@1"]
    assert [s.precision for s in systems] == ["default", "fp32", "int8", "fp32"]
    assert parse_systems([s.name for s in systems], None) == systems


@pytest.mark.parametrize(
    "name, message",
    [
        ("pytorch", "unknown system"),
        ("project:fp16", "project options"),
        ("project:int8:bf16", "project options"),
        ("project:torch:onnxruntime", "one engine"),
        ("project:frontier3", "points 0 to 2"),
        ("transformers:int8", "a precision"),
        ("transformers:bf16:fp32", "a precision"),
        ("onnxruntime:bf16", r"a precision \(fp32 or int8\)"),
        ("onnxruntime:int8:fp32", "a precision"),
        ("openvino:int8", r"openvino takes one option, a precision \(fp32\)"),
        ("openvino:bf16:fp32", "a precision"),
        ("onnxruntime@0", "batch size must be >= 1"),
    ],
)
def test_bad_system_names_are_one_line_errors(name, message):
    with pytest.raises(ValueError, match=message):
        parse_systems([name], FRONTIER)


def test_frontier_systems_need_a_model_with_a_frontier():
    with pytest.raises(ValueError, match="no frontier"):
        parse_systems(["project:frontier"], None)


def test_missing_bench_packages_are_named_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        check_dependencies([System("project"), System("transformers")])
    check_dependencies([System("project")])  # the project's own systems need nothing more


def test_a_missing_openvino_is_named_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=f"openvino system needs openvino: {re.escape(INSTALL_HINT)}"):
        check_dependencies([System("openvino", precision="default")])


@pytest.mark.parametrize("kwargs, message", [(dict(threads=0), "threads"), (dict(warmup=-1), "warmup")])
def test_bad_settings_are_one_line_errors(model_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_benchmark(model_dir, DATA, systems=["project"], fresh_process=False, **kwargs)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu"])
def test_an_unknown_device_is_a_one_line_error(model_dir, device):
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        run_benchmark(model_dir, DATA, systems=["project"], fresh_process=False, device=device)


def test_a_gpu_run_needs_a_gpu_and_refuses_the_cpu_only_systems(model_dir, monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            run_benchmark(model_dir, DATA, systems=["project:bf16"], fresh_process=False, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before anything touches the GPU
    for name in ("onnxruntime@1", "onnxruntime:int8@32", "openvino@1", "project:int8@32"):
        with pytest.raises(ValueError, match=f"{name}.*CPU only"):
            run_benchmark(model_dir, DATA, systems=["project:bf16", name], fresh_process=False, device="cuda")


def test_no_questions_is_an_error(model_dir):
    with pytest.raises(ValueError, match="no questions"):
        run_benchmark(model_dir, DATA.select([]), systems=["project"], fresh_process=False)


# --- measuring ---------------------------------------------------------------------------------------------------


def test_each_project_system_gives_a_row_scored_as_dtb_eval_scores_it(model_dir):
    seen = []
    result = run_benchmark(
        model_dir,
        DATA,
        ["project@1", "project:frontier@4", "project:int8@4"],
        threads=1,
        fresh_process=False,
        progress=seen.append,
    )
    rows = result["rows"]
    assert [r["system"] for r in rows] == [
        "project@1",
        "project:frontier0@4",
        "project:frontier1@4",
        "project:frontier2@4",
        "project:int8@4",
    ]
    assert seen == rows
    reference = evaluate(QuestionAnswerer.from_pretrained(model_dir), DATA, max_answer_len=30)
    assert (rows[0]["f1"], rows[0]["em"]) == (round(reference.f1, 2), round(reference.exact_match, 2))
    assert all(r["questions_per_second"] > 0 for r in rows)
    assert rows[0]["p50_ms"] <= rows[0]["p90_ms"]  # latency only where each question is its own call
    assert all(r["p50_ms"] is None for r in rows[1:])
    assert all(r["peak_rss_mib"] is None for r in rows)  # one process for all: not any system's own peak
    assert result["threads"] == 1 and result["data"]["questions"] == len(QUESTIONS)
    assert result["options"]["max_answer_len"] == 30


def test_the_summary_compares_the_fastest_project_system_within_the_tolerance_with_the_fastest_pipeline():
    def row(system, kind, f1, qps, length="full", p50=None):
        return dict(
            system=system,
            kind=kind,
            precision="fp32",
            length_config=length,
            f1=f1,
            questions_per_second=qps,
            p50_ms=p50,
        )

    rows = [
        row("project@1", "project", 80.0, 20.0, p50=50.0),
        row("project:frontier0@32", "project", 78.0, 300.0, "0.3"),  # too inaccurate
        row("project:frontier1@32", "project", 79.2, 150.0, "0.6"),
        row("transformers@1", "transformers", 80.0, 10.0, p50=100.0),
        row("transformers@32", "transformers", 80.0, 30.0),
        row("openvino@8", "openvino", 79.9, 100.0),
        row("onnxruntime:int8@1", "onnxruntime", 79.0, 60.0, p50=16.0),
    ]
    result = summary(rows, f1_tolerance=1.0)
    assert result["best_within_tolerance"]["system"] == "project:frontier1@32"
    assert result["best_transformers"]["system"] == "transformers@32"
    assert result["speedup"] == 5.0
    assert result["best_peer"]["system"] == "openvino@8" and result["speedup_over_best_peer"] == 1.5
    assert result["p50_ms_batch_1"] == {"project@1": 50.0, "transformers@1": 100.0, "onnxruntime:int8@1": 16.0}


def test_without_an_fp32_row_the_summary_measures_from_the_full_length_bf16_row():
    rows = [
        dict(system="project:bf16@256", kind="project", precision="bf16", length_config="full", f1=80.0,
             questions_per_second=900.0, p50_ms=None),
        dict(system="transformers:bf16@256", kind="transformers", precision="bf16", length_config="full", f1=80.0,
             questions_per_second=300.0, p50_ms=None),
    ]  # fmt: skip
    result = summary(rows)
    assert result["full_length_f1"] == 80.0 and result["speedup"] == 3.0


def test_rounds_run_every_system_again_in_reverse_order_and_report_the_median_round(model_dir):
    heard = []
    result = run_benchmark(
        model_dir, DATA, ["project@4", "project:int8:torch@1"], threads=1, fresh_process=False, rounds=3,
        progress=heard.append,
    )  # fmt: skip
    assert [row["system"] for row in heard] == [
        "project@4", "project:int8:torch@1", "project:int8:torch@1", "project@4", "project@4", "project:int8:torch@1"
    ]  # fmt: skip
    for row in result["rows"]:
        rounds = row["questions_per_second_rounds"]
        assert len(rounds) == 3
        assert row["questions_per_second"] == pytest.approx(sorted(rounds)[1], rel=0.01)
    batch_1 = result["rows"][1]
    assert batch_1["p50_ms"] > 0 and result["rows"][0]["p50_ms"] is None
    assert result["rounds"] == 3 and "Every system ran 3 times" in markdown(result)
    with pytest.raises(ValueError, match="rounds"):
        run_benchmark(model_dir, DATA, ["project@4"], fresh_process=False, rounds=0)


def test_results_are_written_as_a_markdown_table_json_and_a_plot(model_dir, tmp_path):
    systems = ["project@4", "project:frontier@4", "project:frontier1:onnxruntime@1"]
    result = run_benchmark(model_dir, DATA, systems, threads=1, fresh_process=False)
    md, js, png = write_results(result, tmp_path / "out" / "speed")
    assert json.loads(js.read_text()) == result
    assert md.read_text().splitlines()[2] == provenance_line(result)  # beneath the title, as bench/ scripts put it
    table = [line for line in md.read_text().splitlines() if line.startswith("| dynamic-tinybert")]
    assert len(table) == 5 and table[-1].startswith("| dynamic-tinybert on onnxruntime | fp32 |")
    assert [r["engine"] for r in result["rows"]][-2:] == ["torch", "onnxruntime"]
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_dtb_bench_runs_each_system_in_its_own_process_and_reports_its_peak_rss(model_dir, tmp_path, capsys):
    data = write_squad_file(DATA, tmp_path / "data.json")
    output = tmp_path / "speed"
    argv = ["bench", "--model", str(model_dir), "--data", str(data), "--limit", "5"]
    assert cli.main([*argv, "--systems", "project@4", "--threads", "1", "--output", str(output)]) == 0
    assert "| dynamic-tinybert | fp32 | full | 4 |" in capsys.readouterr().out
    (row,) = json.loads(output.with_name("speed.json").read_text())["rows"]
    assert row["peak_rss_mib"] > 0


def test_dtb_bench_prints_the_table_and_writes_the_results(model_dir, tmp_path, capsys):
    data = write_squad_file(DATA, tmp_path / "data.json")
    output = tmp_path / "speed"
    argv = ["bench", "--model", str(model_dir), "--data", str(data), "--limit", "6", "--threads", "1"]
    assert cli.main([*argv, "--systems", "project@4,project:frontier1@4", "--output", str(output)]) == 0
    out = capsys.readouterr()
    assert "| dynamic-tinybert | fp32 | full | 4 |" in out.out and "project@4: F1" in out.err
    assert len(json.loads(output.with_name("speed.json").read_text())["rows"]) == 2


def test_dtb_bench_with_a_bad_system_name_is_a_one_line_error(model_dir, tmp_path, capsys):
    data = write_squad_file(DATA, tmp_path / "data.json")
    assert cli.main(["bench", "--model", str(model_dir), "--data", str(data), "--systems", "tensorflow@1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "tensorflow" in err and len(err.strip().splitlines()) == 1


# --- the competitors ---------------------------------------------------------------------------------------------


def test_the_transformers_pipeline_gives_the_project_answers_at_full_length(model_dir):
    pytest.importorskip("transformers")
    ours = answers_of(System("project", batch_size=4), model_dir)
    assert answers_of(System("transformers", batch_size=4), model_dir) == ours
    assert answers_of(System("transformers", batch_size=1), model_dir) == ours


def test_onnx_runtime_gives_the_project_answers_at_full_length_from_a_cached_export(model_dir, exports):
    pytest.importorskip("optimum.onnxruntime")
    exported = onnx_export(model_dir, exports)
    assert onnx_export(model_dir, exports) == exported  # the same files: exported once
    ours = answers_of(System("project", batch_size=4), model_dir)
    assert answers_of(System("onnxruntime", batch_size=4), model_dir, onnx_dir=exported) == ours


def test_onnx_runtime_int8_is_quantised_once_with_the_config_for_this_cpu(model_dir, exports):
    pytest.importorskip("optimum.onnxruntime")
    config = int8_config()
    quantised = onnx_int8(onnx_export(model_dir, exports), exports, config)
    assert onnx_int8(onnx_export(model_dir, exports), exports, config) == quantised
    assert config in quantised.name and (quantised / "model.onnx").is_file()
    answers = answers_of(System("onnxruntime", 4, "int8"), model_dir, onnx_int8_dir=quantised)
    assert len(answers) == len(QUESTIONS)  # int8 answers may differ from fp32's: they are scored, not compared


@pytest.mark.slow  # importing optimum-intel and converting the model: 10-15 s on a busy 2-core machine
def test_openvino_in_fp32_gives_the_transformers_pipeline_answers_from_a_cached_export(model_dir, exports):
    pytest.importorskip("optimum.intel")
    exported = openvino_export(model_dir, exports)
    assert openvino_export(model_dir, exports) == exported
    pipeline = answers_of(System("transformers", batch_size=4), model_dir)
    assert answers_of(System("openvino", 4, "fp32"), model_dir, openvino_dir=exported) == pipeline
    assert answers_of(System("openvino", 1, "fp32"), model_dir, openvino_dir=exported) == pipeline


@pytest.mark.slow  # importing optimum-intel and converting the model: 10-15 s on a busy 2-core machine
def test_peer_rows_record_the_precision_each_system_ran_in(model_dir, exports):
    pytest.importorskip("optimum.intel")
    pytest.importorskip("optimum.onnxruntime")
    systems = ["openvino@2", "openvino:fp32@1", "onnxruntime:int8@2"]
    result = run_benchmark(model_dir, DATA, systems, threads=1, fresh_process=False, cache_dir=exports)
    rows = {r["system"]: r for r in result["rows"]}
    assert list(rows) == systems and all(r["f1"] >= 0 and r["questions_per_second"] > 0 for r in rows.values())
    assert rows["openvino@2"]["precision"] in ("fp32", "bf16", "fp16")  # OpenVINO's choice for this CPU
    assert rows["openvino:fp32@1"]["precision"] == "fp32" and rows["onnxruntime:int8@2"]["precision"] == "int8"
    assert result["onnx_int8"]["config"].startswith(f"AutoQuantizationConfig.{int8_config()}(")
    assert Path(result["openvino_export"]["path"]).parent == exports
