"""`dtb answer`: answer a JSON-lines file of any length in flat memory, and finish an interrupted run.

Input lines are `{"id": ..., "question": ..., "context": ...}`; output lines `{"id": ..., "answers": [...]}`,
best answer first. A job has three parts, each one function, so that the single-process run here and the Ray
run (`scale_out.py`) share everything but the loop between them:

- `plan_job` reads the input once, checks every line (a bad one is an error naming its line, before any
  answering starts) and cuts it into chunks of `chunk_size` questions, held as byte ranges, not text;
- `answer_chunk` reads one chunk's lines back and answers them in one `QuestionAnswerer.run`, which batches
  their windows by length;
- `AnswerLog` appends each chunk's answers to the output in one write, flushed to disk. A crash can leave
  at most a torn last line, which a resumed job cuts away before it reads which ids are done.

The chunks are a function of the input alone (the first `chunk_size` questions, the next ...), so every way
of running a job answers each question beside the same others. Ids are held as 16-byte digests in numpy
arrays, not as strings: 16 bytes per question, and a few numbers per chunk, are all that grow with the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import check_unicode
from .fileio import decode_utf8

DIGEST = np.dtype("V16")  # an id's blake2b digest: collisions are out of reach for any number of questions
INPUT_SHAPE = '{"id": string, "question": string, "context": string}'


class JobInputError(ValueError):
    """A line of a job's input or output that the job cannot take; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    line: int  # 1-based line number in the input
    id: str
    question: str
    context: str


@dataclass(frozen=True)
class Chunk:
    """Questions answered together: bytes [start, end) of the input, from line `first_line` on.

    `skip` holds the line numbers in it already answered by an earlier run; `questions` how many are left.
    """

    start: int
    end: int
    first_line: int
    questions: int
    skip: tuple[int, ...] = ()


@dataclass
class JobPlan:
    chunks: list[Chunk]
    total: int  # questions in the input
    done: int  # of those, already in the output

    @property
    def pending(self) -> int:
        return self.total - self.done


@dataclass
class JobSummary:
    questions: int  # in the input
    answered: int  # by this run
    skipped: int  # already in the output
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        rate = self.answered / self.seconds if self.seconds > 0 else 0.0
        return {
            "questions": self.questions,
            "answered": self.answered,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
            "questions_per_s": round(rate, 2),
            **self.extra,
        }


def digest(question_id: str) -> bytes:
    return hashlib.blake2b(question_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def numbered_lines(path: Path, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[tuple]:
    """(line number, byte offset, raw bytes) of each line in bytes [start, end) of `path`."""
    with open(path, "rb") as f:
        f.seek(start)
        offset, number = start, first_line
        for raw in f:
            if end is not None and offset >= end:
                return
            yield number, offset, raw
            offset += len(raw)
            number += 1


def parse_question(path: Path, number: int, raw: bytes) -> Question | None:
    """The question on one input line (None for a blank line); a JobInputError naming the line otherwise."""
    where = f"{path}:{number}"
    try:
        text = decode_utf8(raw, where)
    except ValueError as e:
        raise JobInputError(str(e)) from None
    if not text.strip():
        return None
    try:
        item = json.loads(text)
    except json.JSONDecodeError as e:
        raise JobInputError(f"{where}: not JSON ({e.msg})") from None
    if not (isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("id", "question", "context"))):
        raise JobInputError(f"{where}: expected {INPUT_SHAPE}")
    for key in ("id", "question", "context"):
        if not item[key].strip():
            raise JobInputError(f"{where}: the {key} is empty")
        try:
            check_unicode(item[key], f"the {key}")
        except ValueError as e:
            raise JobInputError(f"{where}: {e}") from None
    return Question(number, item["id"], item["question"], item["context"])


def plan_job(path: str | os.PathLike, chunk_size: int, done: np.ndarray | None = None) -> JobPlan:
    """Check every line of the input and cut it into chunks of `chunk_size` questions, leaving out `done` ids.

    `done` is a sorted array of the digests of answered ids (`AnswerLog.done`). Raises JobInputError for the
    first bad line, or for an id that repeats, naming both of its lines.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    path = Path(path)
    done = np.empty(0, DIGEST) if done is None else done
    chunks: list[Chunk] = []
    digests = bytearray()  # every id's digest, for the duplicate check at the end
    pending: list[tuple[int, bytes]] = []  # (line, digest) of the chunk being cut
    chunk_start, chunk_line = 0, 1
    total = answered = 0

    def close_chunk(end: int) -> None:
        nonlocal answered
        lines = [line for line, _ in pending]
        is_done = np.isin(np.frombuffer(b"".join(d for _, d in pending), DIGEST), done)
        skip = tuple(line for line, hit in zip(lines, is_done) if hit)
        answered += len(skip)
        if len(skip) < len(lines):
            chunks.append(Chunk(chunk_start, end, chunk_line, len(lines) - len(skip), skip))
        pending.clear()

    for number, offset, raw in numbered_lines(path):
        question = parse_question(path, number, raw)
        if question is None:
            continue
        if not pending:
            chunk_start, chunk_line = offset, number
        d = digest(question.id)
        digests += d
        pending.append((number, d))
        total += 1
        if len(pending) == chunk_size:
            close_chunk(offset + len(raw))
    if pending:
        close_chunk(path.stat().st_size)
    if total == 0:
        raise JobInputError(f"{path}: no questions in the file")
    _check_unique(path, np.frombuffer(bytes(digests), DIGEST))
    return JobPlan(chunks, total, answered)


def _check_unique(path: Path, digests: np.ndarray) -> None:
    ordered = np.sort(digests)
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeats):
        return
    repeated = bytes(repeats[0])
    first = None
    for number, _, raw in numbered_lines(path):
        question = parse_question(path, number, raw)
        if question is not None and digest(question.id) == repeated:
            if first is not None:
                raise JobInputError(f"{path}:{number}: id {question.id!r} repeats line {first}")
            first = number


def read_chunk(path: str | os.PathLike, chunk: Chunk) -> list[Question]:
    """The questions of a chunk still to answer, read back from the input."""
    path = Path(path)
    skip = set(chunk.skip)
    questions = [
        q
        for number, _, raw in numbered_lines(path, chunk.start, chunk.end, chunk.first_line)
        if number not in skip and (q := parse_question(path, number, raw)) is not None
    ]
    if len(questions) != chunk.questions:
        raise JobInputError(f"{path}: changed while the job ran (lines {chunk.first_line} on)")
    return questions


def answer_chunk(qa, path: str | os.PathLike, chunk: Chunk, **options) -> bytes:
    """The output lines of one chunk: its questions answered by `qa` (a QuestionAnswerer) in one run."""
    questions = read_chunk(path, chunk)
    texts, contexts = [q.question for q in questions], [q.context for q in questions]
    try:
        answers = qa.run(texts, contexts, **options).answers
    except ValueError:
        _raise_for_line(qa, path, questions, options)
        raise
    return b"".join(
        (json.dumps({"id": q.id, "answers": a}, ensure_ascii=False) + "\n").encode("utf-8")
        for q, a in zip(questions, answers)
    )


def _raise_for_line(qa, path, questions: list[Question], options: dict) -> None:
    """Find the question a chunk's ValueError came from and raise it again naming its line."""
    for q in questions:
        try:
            qa.windows([q.question], [q.context], **options)
        except ValueError as e:
            raise JobInputError(f"{path}:{q.line}: {str(e).removeprefix('question 0 ')}") from None


def check_options(qa, options: dict) -> None:
    """Raise for options `qa` cannot answer with (a budget without a frontier too): before any input is read."""
    qa.length_config_for(qa.options(**options))


class AnswerLog:
    """The output file, appended a chunk at a time in one write each, flushed to disk.

    Without `resume` it must be absent or empty. With it, a torn last line (a crash mid-write) is cut away
    and `done` holds the sorted digests of the ids it answers.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists and not resume:
            raise JobInputError(f"{self.path} exists: resume the job that wrote it, or remove it")
        self.done = self._read_done() if exists else np.empty(0, DIGEST)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _read_done(self) -> np.ndarray:
        digests = bytearray()
        whole = 0  # bytes up to the end of the last whole line
        for number, offset, raw in numbered_lines(self.path):
            if not raw.endswith(b"\n"):
                break
            try:
                question_id = json.loads(raw)["id"]
            except (ValueError, KeyError, TypeError):
                question_id = None
            if not isinstance(question_id, str):
                raise JobInputError(f"{self.path}:{number}: not a line of answers this job writes")
            digests += digest(question_id)
            whole = offset + len(raw)
        if whole < self.path.stat().st_size:
            os.truncate(self.path, whole)
        return np.unique(np.frombuffer(bytes(digests), DIGEST))

    def append(self, lines: bytes) -> None:
        view = memoryview(lines)
        while view:
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_job(
    qa,
    input: str | os.PathLike,
    output: str | os.PathLike,
    chunk_size: int = 1024,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    **options,
) -> JobSummary:
    """Answer every question of `input` into `output` with `qa`, one chunk at a time, in this process.

    `on_plan(plan)` is told the plan once the input is checked; `progress(n)` each time n more questions are
    written. With `resume`, ids already in `output` are skipped, so an interrupted job finishes with each id
    exactly once.
    """
    check_options(qa, options)
    with AnswerLog(output, resume) as log:
        plan = plan_job(input, chunk_size, log.done)
        if on_plan is not None:
            on_plan(plan)
        started = time.perf_counter()
        for chunk in plan.chunks:
            log.append(answer_chunk(qa, input, chunk, **options))
            if progress is not None:
                progress(chunk.questions)
    return JobSummary(plan.total, plan.pending, plan.done, time.perf_counter() - started)
