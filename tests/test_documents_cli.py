"""`dtb index` and `dtb ask --index`: build an index from files, answer from it with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamic_tinybert import checkpoint, cli

from conftest import make_tiny_tokenizer, tiny_model

NOTES = "# Cities\n\nWolfgang lives in Berlin, the capital of Germany.\n\nAlice lives in Paris.\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return directory


@pytest.fixture
def dtb(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(cli.MODEL_ENV, raising=False)

    def run(*args) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def index(tmp_path: Path, dtb) -> Path:
    (tmp_path / "notes.md").write_text(NOTES, encoding="utf-8")
    code, out, _ = dtb("index", tmp_path / "notes.md", "--output", tmp_path / "idx", "--passage-chars", 60)
    assert code == 0 and "indexed 2 passages from 1 files" in out
    return tmp_path / "idx"


def test_ask_from_an_index_names_the_file_and_line_of_each_answer(index: Path, model_dir: Path, dtb):
    code, out, _ = dtb("ask", "Where does Wolfgang live?", "--index", index, "--model", model_dir, "--top-k", 2)
    assert code == 0
    answers = out.splitlines()[:-1]
    assert len(answers) == 2 and all("notes.md:" in line for line in answers)
    assert out.splitlines()[-1].startswith("no answer in the ")


def test_ask_from_an_index_as_json_gives_offsets_into_the_file(index: Path, model_dir: Path, dtb):
    question = "Where does Wolfgang live?"
    code, out, _ = dtb("ask", question, "--index", index, "--model", model_dir, "--json", "--top-k", 5)
    result = json.loads(out)
    assert code == 0 and 1 <= len(result["answers"]) <= 5  # fewer after deduplication
    for answer in result["answers"]:
        assert NOTES[answer["source_start"] : answer["source_end"]] == answer["answer"]


def test_ask_from_an_index_refuses_the_single_context_no_answer_flag(index: Path, model_dir: Path, dtb):
    code, _, err = dtb("ask", "Where?", "--index", index, "--model", model_dir, "--handle-impossible-answer")
    assert code == 2 and "--handle-impossible-answer does not apply with --index" in err


def test_ask_takes_an_index_or_a_context_not_both(index: Path, dtb):
    code, _, err = dtb("ask", "Where?", "--index", index, "--context", "Berlin")
    assert code == 2 and "not allowed with argument" in err


def test_index_of_paths_without_text_files_is_a_usage_error(tmp_path: Path, dtb):
    (tmp_path / "script.py").write_text("x = 1\n")
    code, _, err = dtb("index", tmp_path, "--output", tmp_path / "idx")
    assert code == 2 and "no .txt, .md or .jsonl files" in err


def test_ask_from_a_folder_that_is_not_an_index_is_one_line_error(tmp_path: Path, model_dir: Path, dtb):
    code, _, err = dtb("ask", "Where?", "--index", tmp_path, "--model", model_dir)
    assert code == 2 and "not an index" in err and err.count("\n") == 1
