"""`dtb answer`'s job (batch_job.py): chunks, one line per id, atomic appends, resume, and bad lines by number.

The model is the tiny random BERT; the questions are short sentences of its vocabulary, so a job of dozens of
questions takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamic_tinybert import QuestionAnswerer, checkpoint, cli
from dynamic_tinybert.batch_job import AnswerLog, JobInputError, plan_job, run_job
from dynamic_tinybert.frontier import BudgetError

from conftest import make_tiny_tokenizer, tiny_model

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "henry"]
CITIES = ["paris", "london", "berlin", "rome", "madrid", "vienna", "oslo", "athens"]


def question_lines(n: int) -> list[dict]:
    """n questions of different lengths (so that chunks batch them by length), ids q0, q1, ..."""
    return [
        {
            "id": f"q{i}",
            "question": f"where does {NAMES[i % 8]} live?",
            "context": " ".join(f"{NAMES[(i + j) % 8]} lives in {CITIES[(i * 3 + j) % 8]}." for j in range(1 + i % 5)),
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, items: list, blank_every: int = 0) -> Path:
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    if blank_every:
        lines = [line for i, text in enumerate(lines) for line in ([text, ""] if i % blank_every == 0 else [text])]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return QuestionAnswerer.from_pretrained(directory)


def test_job_writes_each_id_once_with_the_answers_of_one_run_over_its_chunk(qa, tmp_path: Path):
    items = question_lines(10)
    source = write_jsonl(tmp_path / "in.jsonl", items, blank_every=3)
    summary = run_job(qa, source, tmp_path / "out.jsonl", chunk_size=4, top_k=2)
    expected = qa.run([i["question"] for i in items[:4]], [i["context"] for i in items[:4]], top_k=2).answers
    written = read_output(tmp_path / "out.jsonl")
    assert [line["id"] for line in written] == [item["id"] for item in items]
    assert [line["answers"] for line in written[:4]] == expected
    assert (summary.questions, summary.answered, summary.skipped) == (10, 10, 0)


def test_plan_cuts_chunks_of_chunk_size_questions_as_byte_ranges_skipping_blank_lines(tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(10), blank_every=2)
    plan = plan_job(source, chunk_size=4)
    assert [c.questions for c in plan.chunks] == [4, 4, 2]
    assert plan.chunks[0].start == 0
    assert all(a.end == b.start for a, b in zip(plan.chunks, plan.chunks[1:]))
    assert plan.chunks[-1].end == source.stat().st_size
    lines = source.read_text().splitlines()
    assert json.loads(lines[plan.chunks[1].first_line - 1])["id"] == "q4"


def test_resumed_job_answers_only_the_rest_and_ends_with_every_id_once(qa, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(12))
    whole, interrupted = tmp_path / "whole.jsonl", tmp_path / "interrupted.jsonl"
    run_job(qa, source, whole, chunk_size=4)

    def crash_after_first_chunk(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(qa, source, interrupted, chunk_size=4, progress=crash_after_first_chunk)
    assert len(read_output(interrupted)) == 4
    summary = run_job(qa, source, interrupted, chunk_size=4, resume=True)
    assert (summary.answered, summary.skipped) == (8, 4)
    assert read_output(interrupted) == read_output(whole)


def test_resume_cuts_a_torn_last_line_away_and_answers_that_id_again(qa, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(6))
    whole, torn = tmp_path / "whole.jsonl", tmp_path / "torn.jsonl"
    run_job(qa, source, whole, chunk_size=2)
    text = whole.read_text()
    torn.write_text(text[: text.index("\n", text.index('"q2"')) - 5])  # q0, q1 whole, q2 cut mid-line
    summary = run_job(qa, source, torn, chunk_size=2, resume=True)
    assert summary.skipped == 2
    assert sorted(read_output(torn), key=lambda a: a["id"]) == sorted(read_output(whole), key=lambda a: a["id"])


def test_a_budget_without_a_frontier_fails_before_the_output_is_touched(qa, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(2))
    with pytest.raises(BudgetError, match="no accuracy/cost frontier"):
        run_job(qa, source, tmp_path / "out.jsonl", budget=0.5)
    assert not (tmp_path / "out.jsonl").exists()


def test_existing_output_is_refused_without_resume(qa, tmp_path: Path):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(2))
    (tmp_path / "out.jsonl").write_text('{"id": "q0", "answers": []}\n')
    with pytest.raises(JobInputError, match="exists: resume"):
        run_job(qa, source, tmp_path / "out.jsonl")


def test_append_writes_whole_lines_after_those_already_there(tmp_path: Path):
    with AnswerLog(tmp_path / "out.jsonl") as log:
        log.append(b'{"id": "a", "answers": []}\n')
    with AnswerLog(tmp_path / "out.jsonl", resume=True) as log:
        assert len(log.done) == 1
        log.append(b'{"id": "b", "answers": []}\n')
    assert [a["id"] for a in read_output(tmp_path / "out.jsonl")] == ["a", "b"]


GOOD = json.dumps({"id": "a", "question": "who?", "context": "alice"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "in.jsonl:2: not JSON"),
        (json.dumps({"id": "b", "question": "who?"}), 'in.jsonl:2: expected {"id": string'),
        (json.dumps({"id": 7, "question": "who?", "context": "x"}), 'in.jsonl:2: expected {"id": string'),
        (json.dumps({"id": "b", "question": " ", "context": "x"}), "in.jsonl:2: the question is empty"),
        (json.dumps({"id": "b", "question": "who?", "context": "\ud800"}), "in.jsonl:2: the context is not valid"),
        (GOOD, "in.jsonl:2: id 'a' repeats line 1"),
    ],
    ids=["not-json", "missing-key", "id-not-string", "empty-question", "lone-surrogate", "duplicate-id"],
)
def test_a_bad_input_line_is_an_error_naming_its_line(tmp_path: Path, line: str, message: str):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD, line])
    with pytest.raises(JobInputError, match=message):
        plan_job(source, chunk_size=8)


def test_a_line_that_is_not_utf8_is_an_error_naming_its_line(tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(GOOD.encode() + b"\n\n" + b'{"id": "\xff"}\n')
    with pytest.raises(JobInputError, match="in.jsonl:3: not UTF-8"):
        plan_job(source, chunk_size=8)


def test_a_question_the_model_cannot_take_is_an_error_naming_its_line(qa, tmp_path: Path):
    items = question_lines(3)
    items[2]["question"] = "where " * 300
    source = write_jsonl(tmp_path / "in.jsonl", items)
    with pytest.raises(JobInputError, match=r"in.jsonl:3: has \d+ tokens"):
        run_job(qa, source, tmp_path / "out.jsonl", chunk_size=8)


def test_dtb_answer_writes_the_output_and_prints_a_summary(qa, tmp_path: Path, capsys: pytest.CaptureFixture):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(5))
    model = tmp_path / "model"
    checkpoint.save_checkpoint(qa.model, qa.tokenizer, model)
    args = ["answer", "--input", str(source), "--output", str(tmp_path / "o.jsonl"), "--model", str(model)]
    code, code_json = cli.main(args), cli.main([*args, "--resume", "--json"])
    out = capsys.readouterr().out
    assert (code, code_json) == (0, 0)
    assert len(read_output(tmp_path / "o.jsonl")) == 5
    assert json.loads(out[out.index("{") :])["skipped"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--actors", "2"], "--actors and --threads-per-actor go with --ray"),
        (["--ray", "--threads", "2"], "--threads-per-actor, not --threads"),
    ],
)
def test_dtb_answer_refuses_ray_options_out_of_place(tmp_path: Path, capsys, args: list, message: str):
    source = write_jsonl(tmp_path / "in.jsonl", question_lines(1))
    code = cli.main(["answer", "--input", str(source), "--output", str(tmp_path / "o.jsonl"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_dtb_answer_names_a_bad_line_in_a_one_line_error(tmp_path: Path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD, "[1, 2]"])
    code = cli.main(["answer", "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "in.jsonl:2: expected" in err
