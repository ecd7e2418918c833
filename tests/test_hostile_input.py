"""Hostile input gets one clear error: a ValueError in Python, one `error:` line and exit 2 from `dtb`, a 422
over HTTP. Never a traceback, whatever the text: hypothesis feeds every text input arbitrary unicode."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import synthetic_dataset, write_squad_file
from test_frontier import dtb

from dynamic_tinybert import QuestionAnswerer, checkpoint, cli
from dynamic_tinybert.cli import common, serve
from dynamic_tinybert.serving import create_app

from conftest import make_tiny_tokenizer, tiny_model

QUESTION = "where does alice live ?"
CONTEXT = "carol lives in rome . alice lives in oslo . bob lives in paris ."
SURROGATE = "\ud800"  # a lone surrogate: what a JSON escape "\ud800" decodes to
BAD_BYTE = "\udcff"  # what Python makes of the byte 0xff in a command-line argument

# Any code point, surrogates and control characters included (hypothesis leaves surrogates out by default).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny random BERT QA checkpoint (128 positions), shared by the module's tests."""
    return checkpoint.save_checkpoint(tiny_model(), make_tiny_tokenizer(), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def qa(model: Path) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(model)


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- lone surrogates and bytes that are not UTF-8 ---------------------------------------------------------


@pytest.mark.parametrize("pair", [(f"who {SURROGATE}?", CONTEXT), (QUESTION, f"bad {BAD_BYTE} byte")])
def test_text_with_a_lone_surrogate_is_a_value_error_naming_it(qa, pair):
    question, context = pair
    with pytest.raises(ValueError, match=r"(question|context) 0 is not valid Unicode text: character \d+"):
        qa(question=question, context=context)


def test_dtb_ask_with_an_argument_that_was_not_utf8_is_one_line(capsys, model):
    code, _, err = dtb(capsys, "ask", f"who {BAD_BYTE}?", "--context", CONTEXT, "--model", model)
    assert_one_error_line(code, err, "question 0", "lone surrogate")


def test_dtb_ask_input_files_with_an_escaped_surrogate_or_a_bad_byte_are_one_line(capsys, model, tmp_path):
    escaped = tmp_path / "escaped.jsonl"
    escaped.write_text(json.dumps({"question": f"who {SURROGATE}?", "context": CONTEXT}) + "\n")
    assert_one_error_line(*dtb(capsys, "ask", "--input", escaped, "--model", model)[::2], "lone surrogate")
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"question": "who \xff?", "context": "x"}\n')
    assert_one_error_line(*dtb(capsys, "ask", "--input", raw, "--model", model)[::2], str(raw), "not UTF-8", "0xff")
    context_file = tmp_path / "context.txt"
    context_file.write_bytes(b"caf\xe9")
    code, _, err = dtb(capsys, "ask", QUESTION, "--context-file", context_file, "--model", model)
    assert_one_error_line(code, err, str(context_file), "not UTF-8")


def test_dtb_eval_data_with_an_escaped_surrogate_is_one_line(capsys, model, tmp_path):
    data = synthetic_dataset(3, seed=1)
    data.articles[0]["paragraphs"][1]["qas"][0]["question"] = f"who {SURROGATE}?"
    path = write_squad_file(data, tmp_path / "data.json")
    code, _, err = dtb(capsys, "eval", "--data", path, "--model", model, "--predictions", tmp_path / "p.json")
    assert_one_error_line(code, err, "question 1", "lone surrogate")
    assert not (tmp_path / "p.json").exists()


def test_http_with_an_escaped_surrogate_is_a_422_not_a_500(qa):
    client = TestClient(create_app(qa))
    body = '{"inputs": {"question": "who \\ud800?", "context": "' + CONTEXT + '"}}'
    response = client.post("/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "lone surrogate" in response.json()["detail"]


# --- command-line values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["-1", "0", "two"])
def test_threads_below_one_are_refused(capsys, model, threads):
    code, _, err = dtb(capsys, "ask", QUESTION, "--context", CONTEXT, "--model", model, "--threads", threads)
    assert_one_error_line(code, err, "--threads")
    code, _, err = dtb(
        capsys, "train", "finetune", "--model", model, "--data", "d", "--output", "o", "--threads", threads
    )
    assert_one_error_line(code, err, "--threads")


@pytest.mark.parametrize("command", ["search", "sweep", "calibrate"])
def test_a_search_with_neither_model_nor_output_says_to_give_output(capsys, monkeypatch, tmp_path, command):
    monkeypatch.delenv(common.MODEL_ENV, raising=False)
    data = write_squad_file(synthetic_dataset(4, seed=1), tmp_path / "data.json")
    flag = "--data" if command == "calibrate" else "--search-data"
    code, _, err = dtb(capsys, command, flag, data)
    assert_one_error_line(code, err, "--output")


@pytest.mark.parametrize("port", ["-1", "0", "70000", "http"])
def test_dtb_serve_refuses_a_port_that_is_not_one(capsys, port):
    assert_one_error_line(*dtb(capsys, "serve", "--port", port)[::2], "--port")


@pytest.fixture
def never_loaded(monkeypatch):
    """The model must not be loaded: the check comes first."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the socket was checked")

    monkeypatch.setattr(serve, "load_answerer", fail)


def test_dtb_serve_on_a_port_in_use_fails_before_loading_the_model(capsys, never_loaded):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = dtb(capsys, "serve", "--port", port)
    assert_one_error_line(code, err, f"127.0.0.1:{port}", "in use")


def test_dtb_serve_on_an_unknown_host_fails_before_loading_the_model(capsys, never_loaded):
    assert_one_error_line(*dtb(capsys, "serve", "--host", "no-such-host.invalid")[::2], "--host", "no-such-host")


def test_dtb_train_refuses_a_window_longer_than_the_model_s_positions(capsys, model, tmp_path):
    data = write_squad_file(synthetic_dataset(4, seed=1), tmp_path / "data.json")
    args = ["train", "finetune", "--model", model, "--data", data, "--output", tmp_path / "o", "--max-seq-len", 100000]
    assert_one_error_line(*dtb(capsys, *args)[::2], "--max-seq-len 100000", "128 positions")
    assert not (tmp_path / "o").exists()


def test_dtb_train_resume_with_no_checkpoint_says_it_starts_from_the_beginning(capsys, model, tmp_path):
    data = write_squad_file(synthetic_dataset(8, seed=1), tmp_path / "data.json")
    args = ["train", "finetune", "--model", model, "--data", data, "--output", tmp_path / "o", "--resume"]
    args += ["--max-steps", 1, "--batch-size", 4, "--max-seq-len", 64, "--doc-stride", 16, "--holdout-articles", 0]
    code, _, err = dtb(capsys, *args, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert "warning: resume: no checkpoint in" in err and "starts from the beginning" in err


# --- arbitrary unicode: no traceback anywhere ---------------------------------------------------------------


@FUZZ
@given(question=ANY_TEXT, context=ANY_TEXT)
def test_the_answerer_answers_or_refuses_any_text(qa, question, context):
    try:
        answer = qa(question=question, context=context)
    except ValueError:
        return
    assert context[answer["start"] : answer["end"]] == answer["answer"]


@FUZZ
@given(question=ANY_TEXT, context=ANY_TEXT)
def test_the_http_service_answers_or_422s_any_text(qa, question, context):
    client = TestClient(create_app(qa))
    body = json.dumps({"inputs": {"question": question, "context": context}})  # \u escapes, surrogates too
    response = client.post("/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 422), response.text


def refuse_to_listen(host: str, port: int):
    """A host that resolves is not bound in a test: serve stops here, as it does for one that cannot listen."""
    raise common.UsageError(f"dtb serve: not listening on {host}:{port} in a test")


# Every text a `dtb` subcommand reads from its arguments, as --option=TEXT (or after --, a positional).
ARGUMENT_TEXTS = [
    ("ask", "--context={text}", "--", "{text}"),
    ("ask", "--context=" + CONTEXT, "--length-config={text}", "--", QUESTION),
    ("ask", "--context=" + CONTEXT, "--budget={text}", "--", QUESTION),
    ("info", "--lengths={text}"),
    ("info", "--length-config={text}"),
    ("search", "--search-data=d.json", "--output=o", "--time-limit={text}"),
    ("sweep", "--search-data=d.json", "--output=o", "--ratios={text}"),
    ("bench", "--data=d.json", "--systems={text}"),
    ("serve", "--host={text}"),
]


@pytest.mark.parametrize("template", ARGUMENT_TEXTS, ids=lambda t: f"{t[0]} {t[-1] if t[-1] != '{text}' else t[1]}")
@FUZZ
@given(text=ANY_TEXT)
def test_dtb_arguments_answer_or_refuse_any_text_in_one_line(capsys, monkeypatch, model, never_loaded, template, text):
    monkeypatch.setenv(common.MODEL_ENV, str(model))
    monkeypatch.setattr(serve, "listening_socket", refuse_to_listen)
    argv = [part.replace("{text}", text) for part in template]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, err)
    if code == 2:
        assert_one_error_line(code, err)


@FUZZ
@given(question=ANY_TEXT, context=ANY_TEXT, answer=ANY_TEXT)
def test_dtb_files_answer_or_refuse_any_text_in_one_line(capsys, model, tmp_path_factory, question, context, answer):
    folder = tmp_path_factory.mktemp("files")
    pairs = folder / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": question, "context": context}) + "\n")
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": question, "answers": [{"text": answer, "answer_start": 0}]}
    ]}]}]}  # fmt: skip
    data = folder / "data.json"
    data.write_text(json.dumps(squad))
    predictions = folder / "predictions.json"
    predictions.write_text(json.dumps({"q1": answer}))
    for argv in (
        ["ask", "--input", pairs, "--model", model],
        ["eval", "--data", data, "--model", model, "--predictions", folder / "out.json"],
        ["score", "--data", data, "--predictions", predictions],
    ):
        code, _, err = dtb(capsys, *argv)
        assert code in (0, 2), (argv, err)
        if code == 2:
            assert_one_error_line(code, err)
