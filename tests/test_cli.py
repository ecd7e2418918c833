"""The `dtb` command line: ask, eval, score, info, and one-line errors with exit code 2.

Most tests call `cli.main([...])` in-process. The model is mostly the tiny random BERT with 384 positions:
with the 128 of `tiny_checkpoint`, a SQuAD context spelled out in its character-level vocabulary takes about
seven times as many windows. MiniLM is loaded only where its real size matters.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from synthetic import synthetic_dataset, write_squad_file

from dynamic_tinybert import CheckpointError, LengthConfig, QuestionAnswerer, checkpoint, cli, cost
from dynamic_tinybert.squad import load_squad, score_predictions

from conftest import (
    SAMPLE_V11,
    SAMPLE_V20,
    full_squad,
    make_tiny_tokenizer,
    needs_full_squad,
    sample_and_full,
    tiny_model,
)

QUESTION = "who won the super bowl?"
CONTEXT = "the denver broncos won the super bowl in the year of the game, and the panthers lost it in london."
RATIOS = "0.9,0.7,0.5"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


@pytest.fixture(autouse=True)
def no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)


@pytest.fixture
def dtb(capsys: pytest.CaptureFixture):
    """Run `dtb ARGS...` in-process; return its exit code and what it printed."""

    def run(*args) -> Result:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BERT QA checkpoint, with 384 positions so that the default max_seq_len fits."""
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return directory


def assert_answer_of(answer: dict, context: str) -> None:
    assert set(answer) == {"score", "start", "end", "answer"}
    assert 0.0 < answer["score"] <= 1.0
    assert 0 <= answer["start"] < answer["end"] <= len(context)
    assert context[answer["start"] : answer["end"]] == answer["answer"]


def text_answer(line: str, context: str) -> str:
    """Check one text line of `dtb ask` ("ANSWER\\t(score S, chars A-B)") and return the answer."""
    answer, details = line.split("\t")
    start, end = details.rsplit("chars ", 1)[1].rstrip(")").split("-")
    assert details.startswith("(score ")
    assert context[int(start) : int(end)] == answer
    return answer


def text_table(out: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in out.splitlines() if line.strip())


def assert_usage_error(result: Result, *fragments: str) -> None:
    """Exit code 2 and exactly one line on stderr, "error: ...", that names the problem; no traceback."""
    assert result.code == 2
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.err


# --- dtb ask ---------------------------------------------------------------------------------------------------


def test_ask_answers_with_a_span_of_the_context_given_with_context(dtb, model_dir: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir)
    assert (result.code, result.err) == (0, "")
    [line] = result.out.splitlines()
    assert text_answer(line, CONTEXT)


def test_ask_reads_the_context_from_a_file(dtb, model_dir: Path, tmp_path: Path):
    (tmp_path / "context.txt").write_text(CONTEXT)
    from_file = dtb("ask", QUESTION, "--context-file", tmp_path / "context.txt", "--model", model_dir, "--json")
    given = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json")
    assert from_file.code == 0
    assert from_file.json == given.json


def test_ask_reads_the_context_from_stdin_when_it_is_not_a_terminal(
    dtb, model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sys, "stdin", io.StringIO(CONTEXT))  # StringIO.isatty() is False
    result = dtb("ask", QUESTION, "--model", model_dir, "--json")
    assert result.code == 0
    assert_answer_of(result.json["answers"][0], CONTEXT)


def test_ask_json_prints_the_question_and_answers_with_character_offsets_into_the_context(dtb, model_dir: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json")
    assert result.code == 0
    printed = result.json
    assert set(printed) == {"question", "answers"}
    assert printed["question"] == QUESTION
    assert len(printed["answers"]) == 1
    assert_answer_of(printed["answers"][0], CONTEXT)


def test_ask_top_k_3_gives_three_answers_best_first(dtb, model_dir: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json", "--top-k", 3)
    answers = result.json["answers"]
    assert len(answers) == 3
    for answer in answers:
        assert_answer_of(answer, CONTEXT)
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)


def test_ask_top_k_3_prints_three_text_lines(dtb, model_dir: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--top-k", 3)
    assert len([text_answer(line, CONTEXT) for line in result.out.splitlines()]) == 3


@pytest.mark.parametrize("length_config", [RATIOS, "20,15,10", "0.9,0.7,0.5+q"], ids=["ratios", "tokens", "protect-q"])
def test_ask_answers_under_a_length_config(dtb, model_dir: Path, length_config: str):
    result = dtb(
        "ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json", "--length-config", length_config
    )
    assert (result.code, result.err) == (0, "")
    assert_answer_of(result.json["answers"][0], CONTEXT)


@pytest.mark.parametrize("length_config", [None, "0.9,0.7,0.5+q"])
def test_ask_on_onnx_runtime_gives_the_eager_answers(dtb, model_dir: Path, length_config):
    pytest.importorskip("onnxruntime")
    common = ["ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json", "--top-k", 3]
    common += [] if length_config is None else ["--length-config", length_config]
    eager, exported = dtb(*common, "--engine", "torch"), dtb(*common, "--engine", "onnxruntime")
    assert (exported.code, exported.err) == (0, "")
    for a, b in zip(exported.json["answers"], eager.json["answers"], strict=True):
        assert {**a, "score": 0} == {**b, "score": 0} and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_eval_says_which_engine_ran_int8(dtb, model_dir: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    common = ["eval", "--data", SAMPLE_V11, "--limit", 3, "--model", model_dir, "--json", "--precision", "int8"]
    auto = dtb(*common, "--predictions", tmp_path / "a.json")
    eager = dtb(*common, "--predictions", tmp_path / "b.json", "--engine", "torch")
    assert auto.code == eager.code == 0
    assert (auto.json["engine"], eager.json["engine"]) == ("onnxruntime", "torch")


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--engine", "tvm"], ["argument --engine", "invalid choice", "'tvm'"]),
        (["--engine", "onnxruntime", "--precision", "bf16"], ["onnxruntime engine runs fp32 or int8, not bf16"]),
    ],
)
def test_an_engine_that_cannot_run_is_a_usage_error(dtb, model_dir: Path, flags, fragments):
    assert_usage_error(dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, *flags), *fragments)


def test_ask_answers_every_line_of_a_json_lines_input_in_order(dtb, model_dir: Path, tmp_path: Path):
    pairs = [
        {"question": QUESTION, "context": CONTEXT},
        {"question": "where is the river?", "context": "the river runs through paris and the city of rome."},
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs) + "\n")  # a blank line is skipped
    result = dtb("ask", "--input", path, "--model", model_dir, "--json")
    assert result.code == 0
    printed = [json.loads(line) for line in result.out.splitlines()]
    assert [p["question"] for p in printed] == [p["question"] for p in pairs]
    for answers, pair in zip(printed, pairs, strict=True):
        assert_answer_of(answers["answers"][0], pair["context"])


def test_ask_uses_the_dtb_model_environment_variable_when_model_is_absent(
    dtb, model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(cli.MODEL_ENV, str(model_dir))
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--json")
    assert result.code == 0
    assert_answer_of(result.json["answers"][0], CONTEXT)


def test_model_option_wins_over_the_dtb_model_environment_variable(
    dtb, model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv(cli.MODEL_ENV, str(tmp_path / "not-a-model"))
    result = dtb("info", "--model", model_dir, "--json")
    assert result.code == 0
    assert result.json["model"] == str(model_dir)


def test_dtb_console_script_answers_as_json(model_dir: Path):
    dtb_script = Path(sys.executable).with_name("dtb")
    completed = subprocess.run(
        [dtb_script, "ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout)
    assert printed["question"] == QUESTION
    assert_answer_of(printed["answers"][0], CONTEXT)


# --- dtb eval --------------------------------------------------------------------------------------------------


def test_eval_writes_predictions_for_the_first_limit_questions(dtb, model_dir: Path, tmp_path: Path):
    predictions = tmp_path / "predictions.json"
    result = dtb("eval", "--model", model_dir, "--data", SAMPLE_V11, "--limit", 20, "--predictions", predictions)
    assert result.code == 0
    written = json.loads(predictions.read_text())
    assert list(written) == [q.id for q in load_squad(SAMPLE_V11, limit=20).questions]
    assert all(isinstance(answer, str) for answer in written.values())


def test_eval_prints_em_f1_speed_and_macs_as_a_table(dtb, model_dir: Path, tmp_path: Path):
    result = dtb(
        "eval", "--model", model_dir, "--data", SAMPLE_V11, "--limit", 20, "--predictions", tmp_path / "p.json"
    )
    assert result.code == 0
    table = text_table(result.out)
    assert {"exact_match", "f1", "questions_per_second", "mean_macs"} <= set(table)
    assert table["questions"] == "20"
    assert float(table["questions_per_second"]) > 0
    assert int(table["mean_macs"].replace(",", "")) > 0
    assert table["length_config"] == "full"


def test_eval_json_reports_the_official_scores_of_the_predictions_it_wrote(dtb, model_dir: Path, tmp_path: Path):
    predictions = tmp_path / "predictions.json"
    result = dtb(
        "eval", "--model", model_dir, "--data", SAMPLE_V11, "--limit", 20, "--predictions", predictions, "--json"
    )
    assert result.code == 0
    summary = result.json
    official = score_predictions(load_squad(SAMPLE_V11, limit=20), json.loads(predictions.read_text()))
    assert (summary["exact_match"], summary["f1"], summary["total"]) == (
        official["exact_match"],
        official["f1"],
        20,
    )
    assert summary["questions"] == 20
    assert summary["questions_per_second"] > 0
    assert summary["mean_macs"] > 0
    assert summary["macs_ratio_to_full_length"] == 1.0
    assert summary["predictions"] == str(predictions)


def test_eval_with_a_dropping_length_config_reports_fewer_macs(dtb, model_dir: Path, tmp_path: Path):
    args = ("eval", "--model", model_dir, "--data", SAMPLE_V11, "--limit", 5, "--predictions", tmp_path / "p.json")
    full = dtb(*args, "--json").json
    dropping = dtb(*args, "--json", "--length-config", RATIOS).json
    assert dropping["length_config"] == RATIOS
    assert dropping["mean_macs"] < full["mean_macs"]
    assert dropping["macs_ratio_to_full_length"] < 1.0


# --- dtb score -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", sample_and_full(SAMPLE_V11, "dev-v1.1.json.gz"))
def test_score_of_the_gold_answers_is_100(dtb, tmp_path: Path, data: Path):
    gold = {q.id: q.answers[0] for q in load_squad(data).questions}
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    result = dtb("score", "--data", data, "--predictions", tmp_path / "gold.json", "--json")
    assert result.code == 0
    metrics = result.json
    assert (metrics["exact_match"], metrics["f1"], metrics["total"]) == (100.0, 100.0, len(gold))
    assert metrics["missing"] == []


@pytest.mark.parametrize(
    "data,total,missing",
    [
        pytest.param(SAMPLE_V11, "320", "310", id="sample"),
        pytest.param(
            full_squad("dev-v1.1.json.gz"), "10,570", "10,560", id="full", marks=needs_full_squad("dev-v1.1.json.gz")
        ),
    ],
)
def test_score_prints_a_table_counting_the_missing_predictions(dtb, tmp_path: Path, data, total, missing):
    some = {q.id: q.answers[0] for q in load_squad(data, limit=10).questions}
    (tmp_path / "some.json").write_text(json.dumps(some))
    result = dtb("score", "--data", data, "--predictions", tmp_path / "some.json")
    assert result.code == 0
    table = text_table(result.out)
    assert table["total"] == total
    assert table["missing"] == missing


@pytest.mark.parametrize("data", sample_and_full(SAMPLE_V20, "dev-v2.0.json.gz"))
def test_score_of_a_v2_file_reports_answerable_and_unanswerable_scores(dtb, tmp_path: Path, data: Path):
    gold = {q.id: q.answers[0] if q.answers else "" for q in load_squad(data).questions}
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    result = dtb("score", "--data", data, "--predictions", tmp_path / "gold.json", "--json")
    assert result.code == 0
    metrics = result.json
    assert {"HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1", "NoAns_total"} <= set(metrics)
    assert metrics["exact"] == metrics["f1"] == metrics["HasAns_exact"] == metrics["NoAns_exact"] == 100.0


def partly_predicted(tmp_path: Path, predicted: int) -> tuple[Path, Path]:
    """A 10-question file and gold predictions for its first `predicted` questions."""
    dataset = synthetic_dataset(10, seed=5)
    gold = {q.id: q.answers[0] for q in dataset.questions[:predicted]}
    (tmp_path / "some.json").write_text(json.dumps(gold))
    return write_squad_file(dataset, tmp_path / "data.json"), tmp_path / "some.json"


def test_score_of_part_of_a_file_counts_the_rest_as_zero_and_says_so(dtb, tmp_path: Path):
    data, predictions = partly_predicted(tmp_path, 3)
    result = dtb("score", "--data", data, "--predictions", predictions, "--json")
    assert result.code == 0
    assert result.json["f1"] == pytest.approx(30.0) and len(result.json["missing"]) == 7
    assert "7 of 10 questions have no prediction" in result.err and "--predicted-only" in result.err


@pytest.mark.parametrize("option", [("--predicted-only",), ("--limit", "3")])
def test_score_of_only_the_predicted_or_the_first_n_questions(dtb, tmp_path: Path, option: tuple):
    data, predictions = partly_predicted(tmp_path, 3)
    result = dtb("score", "--data", data, "--predictions", predictions, "--json", *option)
    assert result.code == 0 and result.err == ""
    assert (result.json["f1"], result.json["total"], result.json["missing"]) == (100.0, 3, [])


def test_score_predicted_only_with_no_prediction_for_the_file_is_a_usage_error(dtb, tmp_path: Path):
    data, predictions = partly_predicted(tmp_path, 0)
    assert_usage_error(dtb("score", "--data", data, "--predictions", predictions, "--predicted-only"), "none")


@pytest.mark.parametrize("na_probs", [[0.5], {"q": "high"}, {"q": True}], ids=["list", "string", "bool"])
def test_score_with_malformed_na_probs_is_a_one_line_error(dtb, tmp_path: Path, na_probs):
    data, predictions = partly_predicted(tmp_path, 3)
    (tmp_path / "na.json").write_text(json.dumps(na_probs))
    result = dtb("score", "--data", data, "--predictions", predictions, "--na-probs", tmp_path / "na.json")
    assert_usage_error(result, "na.json", "not a no-answer probabilities file")


# --- dtb info --------------------------------------------------------------------------------------------------


def test_info_json_gives_the_shape_parameters_and_macs_per_length(dtb, model_dir: Path):
    result = dtb("info", "--model", model_dir, "--json")
    assert result.code == 0
    info = result.json
    model = tiny_model(max_position_embeddings=384)
    assert (info["layers"], info["hidden"], info["heads"], info["intermediate"]) == (3, 32, 4, 48)
    assert info["max_positions"] == 384
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["macs"] == [
        {"tokens": 128, "macs_full": cost.macs(model.config, 128)},
        {"tokens": 384, "macs_full": cost.macs(model.config, 384)},
    ]


def test_info_with_a_length_config_adds_its_macs_and_ratio_per_length(dtb, model_dir: Path):
    result = dtb("info", "--model", model_dir, "--json", "--lengths", "64,200", "--length-config", RATIOS)
    assert result.code == 0
    info = result.json
    assert info["length_config"] == RATIOS
    config = tiny_model(max_position_embeddings=384).config
    length_config = LengthConfig.parse(RATIOS)
    for row, tokens in zip(info["macs"], [64, 200], strict=True):
        assert row["tokens"] == tokens
        assert row["macs_config"] == cost.macs(config, tokens, length_config)
        assert row["ratio"] == round(row["macs_config"] / row["macs_full"], 4) < 1


def test_info_prints_a_table_of_macs(dtb, model_dir: Path):
    result = dtb("info", "--model", model_dir, "--length-config", RATIOS)
    assert result.code == 0
    rows = [line.split() for line in result.out.splitlines() if line.strip()]
    assert ["tokens", "macs_full", "macs_config", "ratio"] in rows
    config = tiny_model(max_position_embeddings=384).config
    assert any(row[:2] == ["384", f"{cost.macs(config, 384):,}"] for row in rows)


def test_info_of_minilm_l6_h384_counts_4_758_552_960_macs_at_384_tokens(dtb, minilm_qa_dir: Path):
    result = dtb("info", "--model", minilm_qa_dir, "--json", "--lengths", 384)
    assert result.code == 0
    info = result.json
    assert (info["layers"], info["hidden"], info["intermediate"]) == (6, 384, 1536)
    assert info["parameters"] == 22_566_146  # MiniLM-L6-H384 without its pooler, plus the 384x2 span head
    assert info["macs"] == [{"tokens": 384, "macs_full": 4_758_552_960}]


# --- errors: one line on stderr, exit code 2 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["ask", QUESTION, "--context", CONTEXT], ["eval", "--data", SAMPLE_V11, "--limit", 1], ["info"]],
    ids=["ask", "eval", "info"],
)
def test_no_model_given_and_none_installed_is_a_usage_error(dtb, args: list, monkeypatch, tmp_path: Path):
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", tmp_path / "not-installed")
    assert_usage_error(dtb(*args), "no model", "--model", "$DTB_MODEL", "no default model")


def test_ask_without_a_model_uses_the_installed_default(dtb, monkeypatch, tiny_checkpoint: Path):
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", tiny_checkpoint)
    by_default = dtb("ask", QUESTION, "--context", CONTEXT, "--json")
    named = dtb("ask", QUESTION, "--context", CONTEXT, "--json", "--model", tiny_checkpoint)
    assert by_default.code == 0 and by_default.out == named.out


def test_from_pretrained_without_a_model_loads_the_installed_default(monkeypatch, tiny_checkpoint: Path, tmp_path):
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", tiny_checkpoint)
    assert QuestionAnswerer.from_pretrained().model.config == checkpoint.load_config(tiny_checkpoint)
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL", tmp_path / "not-installed")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        QuestionAnswerer.from_pretrained()


def test_nonexistent_model_directory_is_named_in_the_error(dtb, tmp_path: Path):
    missing = tmp_path / "no-such-model"
    assert_usage_error(dtb("ask", QUESTION, "--context", CONTEXT, "--model", missing), str(missing))


def test_directory_without_config_json_is_not_a_checkpoint(dtb, tmp_path: Path):
    assert_usage_error(
        dtb("ask", QUESTION, "--context", CONTEXT, "--model", tmp_path), str(tmp_path), "not a checkpoint directory"
    )


def test_increasing_length_config_is_a_usage_error(dtb, model_dir: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", model_dir, "--length-config", "0.5,0.7,0.9")
    assert_usage_error(result, "--length-config", "must not increase")


@pytest.mark.parametrize("command", ["ask", "eval", "info"])
def test_length_config_for_another_number_of_layers_is_a_usage_error(dtb, model_dir: Path, command: str):
    args = {
        "ask": ["ask", QUESTION, "--context", CONTEXT],
        "eval": ["eval", "--data", SAMPLE_V11, "--limit", 1],
        "info": ["info"],
    }[command]
    result = dtb(*args, "--model", model_dir, "--length-config", "0.9,0.7")
    assert_usage_error(result, "2 entries", "3 layers")


@pytest.mark.parametrize("command", ["ask", "eval", "calibrate", "serve", "bench"])
def test_a_device_torch_cannot_name_is_refused_before_the_model_loads(dtb, model_dir: Path, command: str):
    args = {
        "ask": ["ask", QUESTION, "--context", CONTEXT],
        "eval": ["eval", "--data", SAMPLE_V11],
        "calibrate": ["calibrate", "--data", SAMPLE_V11],
        "serve": ["serve"],
        "bench": ["bench", "--data", SAMPLE_V11],
    }[command]
    result = dtb(*args, "--model", model_dir, "--device", "tpu")
    assert_usage_error(result, "argument --device", "cpu or cuda", "'tpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_usage_error(dtb, model_dir: Path):
    result = dtb("eval", "--data", SAMPLE_V11, "--model", model_dir, "--device", "cuda")
    assert_usage_error(result, "argument --device", "sees no CUDA GPU")


def test_eval_on_the_cpu_device_answers_as_without_it(dtb, model_dir: Path, tmp_path: Path):
    common = ["eval", "--data", SAMPLE_V11, "--limit", 3, "--model", model_dir, "--json"]
    default = dtb(*common, "--predictions", tmp_path / "a.json")
    on_cpu = dtb(*common, "--predictions", tmp_path / "b.json", "--device", "cpu")
    assert default.code == on_cpu.code == 0
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_missing_data_file_is_named_in_the_error(dtb, model_dir: Path, tmp_path: Path):
    missing = tmp_path / "dev.json"
    assert_usage_error(dtb("eval", "--model", model_dir, "--data", missing), str(missing), "not found")


def test_missing_predictions_file_is_named_in_the_error(dtb, tmp_path: Path):
    missing = tmp_path / "predictions.json"
    assert_usage_error(dtb("score", "--data", SAMPLE_V11, "--predictions", missing), str(missing), "not found")


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '{"id": 3}'], ids=["list", "not-json", "not-text"])
def test_bad_predictions_file_is_named_in_the_error(dtb, tmp_path: Path, content: str):
    bad = tmp_path / "predictions.json"
    bad.write_text(content)
    assert_usage_error(dtb("score", "--data", SAMPLE_V11, "--predictions", bad), str(bad), "not a predictions file")


def test_unknown_subcommand_is_a_usage_error(dtb):
    assert_usage_error(dtb("frobnicate"), "invalid choice", "'frobnicate'")


def test_missing_subcommand_is_a_usage_error(dtb):
    assert_usage_error(dtb(), "required", "command")


def test_ask_without_a_context_on_a_terminal_is_a_usage_error(dtb, model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert_usage_error(dtb("ask", QUESTION, "--model", model_dir), "--context", "stdin")


def test_ask_without_a_question_is_a_usage_error(dtb, model_dir: Path):
    assert_usage_error(dtb("ask", "--context", CONTEXT, "--model", model_dir), "question")


@pytest.mark.parametrize("bad_line", ["not json", "[1, 2]", '{"question": "who?"}'], ids=["text", "list", "no-context"])
def test_ask_input_with_a_bad_line_is_a_usage_error(dtb, model_dir: Path, tmp_path: Path, bad_line: str):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "context": CONTEXT}) + "\n" + bad_line + "\n")
    assert_usage_error(dtb("ask", "--input", path, "--model", model_dir))


@pytest.mark.parametrize("bad_line", ["[1, 2]", '{"question": "who?"}'], ids=["list", "no-context"])
def test_ask_input_with_a_line_of_the_wrong_shape_names_the_file(dtb, model_dir: Path, tmp_path: Path, bad_line: str):
    path = tmp_path / "questions.jsonl"
    path.write_text(bad_line + "\n")
    assert_usage_error(dtb("ask", "--input", path, "--model", model_dir), f"{path}:1:", '"question"', '"context"')


def test_ask_input_with_a_line_that_is_not_json_names_the_file(dtb, model_dir: Path, tmp_path: Path):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "context": CONTEXT}) + "\nnot json\n")
    assert_usage_error(dtb("ask", "--input", path, "--model", model_dir), f"{path}:2:", "not JSON")


def test_ask_input_with_a_context_that_is_not_text_is_a_usage_error(dtb, model_dir: Path, tmp_path: Path):
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "context": 5}) + "\n")
    assert_usage_error(dtb("ask", "--input", path, "--model", model_dir), "context")


def test_max_seq_len_beyond_the_models_positions_is_a_usage_error(dtb, tiny_checkpoint: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", tiny_checkpoint, "--max-seq-len", 256)
    assert_usage_error(result, "max_seq_len (256)", "128 positions")


# --- models with fewer than 384 positions ----------------------------------------------------------------------


def test_ask_on_a_model_with_128_positions_answers_with_windows_that_fit_it(dtb, tiny_checkpoint: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", tiny_checkpoint, "--json")
    assert (result.code, result.err) == (0, "")
    assert_answer_of(result.json["answers"][0], CONTEXT)


def test_ask_on_a_model_with_128_positions_accepts_max_seq_len_128(dtb, tiny_checkpoint: Path):
    result = dtb("ask", QUESTION, "--context", CONTEXT, "--model", tiny_checkpoint, "--max-seq-len", 128, "--json")
    assert (result.code, result.err) == (0, "")
    assert_answer_of(result.json["answers"][0], CONTEXT)


def test_info_on_a_model_with_128_positions_works_without_lengths(dtb, tiny_checkpoint: Path):
    result = dtb("info", "--model", tiny_checkpoint, "--json")
    assert result.code == 0, result.err
    assert all(row["tokens"] <= 128 for row in result.json["macs"])


# --- help ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["ask"], ["eval"], ["score"], ["info"], ["serve"]],
    ids=["dtb", "ask", "eval", "score", "info", "serve"],
)
def test_help_exits_0_with_usage(capsys: pytest.CaptureFixture, command: list[str]):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dtb {command[0] if command else ''}".rstrip())


# --- export ---------------------------------------------------------------------------------------------------------


def test_export_fp16_halves_the_weights_and_loads_back_as_fp32_with_close_logits(dtb, tiny_checkpoint: Path, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "release"
    result = dtb("export", "--model", tiny_checkpoint, "--output", out, "--fp16")
    assert result.code == 0 and "fp16" in result.out
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_checkpoint / "model.safetensors").stat().st_size
    original, exported = checkpoint.load_model(tiny_checkpoint), checkpoint.load_model(out)
    assert all(p.dtype == torch.float32 for p in exported.parameters())
    ids = torch.tensor([[2, 5, 6, 7, 3, 8, 9, 3]])
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    a, b = original(ids, mask, types), exported(ids, mask, types)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-2)
    assert not (out / "pareto.json").exists()


def test_export_copies_the_frontier_and_refuses_to_overwrite_its_source(dtb, tiny_checkpoint: Path, tmp_path):
    (tiny_checkpoint / "pareto.json").write_text('{"frontier": []}')
    assert dtb("export", "--model", tiny_checkpoint, "--output", tmp_path / "copy").code == 0
    assert (tmp_path / "copy" / "pareto.json").read_text() == '{"frontier": []}'
    assert_usage_error(dtb("export", "--model", tiny_checkpoint, "--output", tiny_checkpoint), "new folder")


def test_export_average_with_mixes_every_weight_by_the_given_share_and_leaves_the_frontier_behind(
    dtb, tiny_checkpoint: Path, tmp_path
):
    (tiny_checkpoint / "pareto.json").write_text('{"frontier": []}')
    other = checkpoint.save_checkpoint(tiny_model(seed=1), make_tiny_tokenizer(), tmp_path / "other")
    mix = tmp_path / "mix"
    share = ("--average-with", other, "--average-weight", "0.25")
    result = dtb("export", "--model", tiny_checkpoint, *share, "--output", mix)
    assert result.code == 0, result.err
    a, b = checkpoint.load_model(tiny_checkpoint).state_dict(), checkpoint.load_model(other).state_dict()
    mixed = checkpoint.load_model(tmp_path / "mix").state_dict()
    assert all(torch.allclose(mixed[k], 0.75 * a[k] + 0.25 * b[k], atol=1e-6) for k in a)
    assert not torch.equal(mixed["qa_outputs.weight"], a["qa_outputs.weight"])
    assert not (tmp_path / "mix" / "pareto.json").exists()  # measured on other weights


def test_export_average_with_refuses_a_bad_share_another_architecture_or_vocabulary(
    dtb, tiny_checkpoint: Path, tmp_path
):
    def export_with(other, *extra):
        return dtb("export", "--model", tiny_checkpoint, "--average-with", other, *extra, "--output", tmp_path / "mix")

    assert_usage_error(export_with(tiny_checkpoint, "--average-weight", "1.5"), "--average-weight", "[0, 1]")
    wider = checkpoint.save_checkpoint(tiny_model(intermediate_size=64), make_tiny_tokenizer(), tmp_path / "wider")
    assert_usage_error(export_with(wider), "intermediate.dense.weight", "(64, 32)")
    scored = tiny_model(token_selection="learned")
    scored = checkpoint.save_checkpoint(scored, make_tiny_tokenizer(), tmp_path / "scored")
    assert_usage_error(export_with(scored), "different weights", "token_scorer")
    vocab = make_tiny_tokenizer()
    vocab.add_tokens(["zebra"])
    renamed = checkpoint.save_checkpoint(tiny_model(), vocab, tmp_path / "vocab")
    assert_usage_error(export_with(renamed), "--average-with", "different vocabulary")
    assert not (tmp_path / "mix").exists()
