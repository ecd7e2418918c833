"""Offline retrieval: text, markdown and JSONL files -> passages with their offsets -> a BM25 index on disk.

A passage is a run of whole paragraphs (blank-line separated; a markdown heading starts a new one) of at
most `passage_chars` characters, a longer paragraph cut at sentence ends; each keeps its file, the
character offsets and the line where it starts, so an answer found in it points back into the file. A
JSONL file holds one {"id", "text"} record a line, each split the same way, offsets into its text.

The index folder holds bm25s's sparse score matrix (loaded memory-mapped), the passages as JSON lines with
an array of their byte offsets (also memory-mapped: a query reads only the passages it returns), and
index.json saying how it was built.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .fileio import atomic_write_text, decode_utf8

if TYPE_CHECKING:
    from .pipeline import QuestionAnswerer

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl",)
PASSAGE_CHARS = 1000  # about 200 words: a few paragraphs, one or two model windows
MAX_RETRIEVE = 1000  # passages one query may ask for
INDEX_FORMAT = 1
STOPWORDS = "en"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


@dataclass(frozen=True)
class Passage:
    """A piece of a source file: its text and where it lies there."""

    id: str  # source#n, unique in the index
    source: str  # the file it came from
    record: str | None  # the JSONL record's id (None for a text or markdown file)
    line: int  # 1-based line of its first character (in a JSONL file: the record's line)
    start: int  # character offsets of the text in the file (in a JSONL file: in the record's text)
    end: int
    text: str


def passage_spans(text: str, passage_chars: int = PASSAGE_CHARS) -> list[tuple[int, int]]:
    """(start, end) character spans of the passages of `text`: whole paragraphs up to `passage_chars`."""
    if passage_chars < 1:
        raise ValueError(f"passage_chars must be >= 1, got {passage_chars}")
    paragraphs = []
    position = 0
    for match in [*_PARAGRAPH_BREAK.finditer(text), None]:
        chunk = text[position : len(text) if match is None else match.start()]
        first, last = position + len(chunk) - len(chunk.lstrip()), position + len(chunk.rstrip())
        if last > first:
            paragraphs.extend(_cut(text, first, last, passage_chars))
        if match is not None:
            position = match.end()
    spans: list[tuple[int, int]] = []
    for start, end in paragraphs:
        heading = text.startswith("#", start)
        if spans and not heading and end - spans[-1][0] <= passage_chars:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _cut(text: str, start: int, end: int, passage_chars: int) -> list[tuple[int, int]]:
    """One paragraph as pieces of at most `passage_chars`, cut after a sentence, else at a space."""
    pieces = []
    while end - start > passage_chars:
        limit = start + passage_chars
        ends = [m.end() for m in _SENTENCE_END.finditer(text, start, limit)]
        cut = ends[-1] if ends and ends[-1] > start + passage_chars // 2 else text.rfind(" ", start + 1, limit) + 1
        if cut <= start:
            cut = limit  # one unbroken word longer than a passage
        pieces.append((start, start + len(text[start:cut].rstrip())))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        pieces.append((start, end))
    return pieces


def split_passages(
    text: str, source: str, record: str | None = None, line: int = 1, passage_chars: int = PASSAGE_CHARS
) -> list[Passage]:
    """The passages of one text; `line` is the line the text starts on in its file."""
    passages = []
    for start, end in passage_spans(text, passage_chars):
        start_line = line if record is not None else line + text.count("\n", 0, start)
        name = source if record is None else f"{source}#{record}"
        passages.append(Passage(f"{name}#{len(passages)}", source, record, start_line, start, end, text[start:end]))
    return passages


def source_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The text, markdown and JSONL files of `paths`: files as given, folders searched recursively."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
        elif path.is_file():
            if path.suffix.lower() not in _SUFFIXES:
                raise ValueError(f"{path}: not a text, markdown or JSONL file (give {', '.join(_SUFFIXES)})")
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return list(dict.fromkeys(files))


_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES


def read_passages(paths: Iterable[str | os.PathLike], passage_chars: int = PASSAGE_CHARS) -> list[Passage]:
    """Every passage of the files of `paths`, in file order; empty files and records give none."""
    passages: list[Passage] = []
    for path in source_files(paths):
        text = decode_utf8(path.read_bytes(), str(path))
        if path.suffix.lower() in JSONL_SUFFIXES:
            for number, record_id, record_text in _jsonl_records(path, text):
                passages += split_passages(record_text, str(path), record_id, number, passage_chars)
        else:
            passages += split_passages(text, str(path), passage_chars=passage_chars)
    return passages


def _jsonl_records(path: Path, text: str) -> Iterable[tuple[int, str, str]]:
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'{path}:{number}: expected {{"id": ..., "text": string}}')
        record_id = record.get("id", str(number))
        if isinstance(record_id, bool) or not isinstance(record_id, str | int):
            raise ValueError(f"{path}:{number}: 'id' must be a string or an integer")
        record_id = str(record_id)
        if record_id in seen:
            raise ValueError(f"{path}:{number}: id {record_id!r} is used twice")
        seen.add(record_id)
        yield number, record_id, record["text"]


def _tokenize(texts: list[str], return_ids: bool):
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=return_ids, show_progress=False)


class Retriever:
    """BM25 over passages: `build` from passages, `save` to a folder, `load` it back memory-mapped."""

    def __init__(self, bm25, passages: _PassageStore, settings: dict) -> None:
        self.bm25 = bm25
        self.passages = passages
        self.settings = settings

    @classmethod
    def build(cls, passages: Sequence[Passage], **settings) -> Retriever:
        """An index of `passages` (at least one); `settings` are recorded in index.json (e.g. passage_chars)."""
        import bm25s

        if not passages:
            raise ValueError("no passages to index: the files hold no text")
        bm25 = bm25s.BM25()
        bm25.index(_tokenize([p.text for p in passages], return_ids=True), show_progress=False)
        return cls(bm25, _PassageStore.in_memory(passages), {**settings, "stopwords": STOPWORDS})

    def __len__(self) -> int:
        return len(self.passages)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self.bm25.save(str(folder / "bm25"))
        self.passages.save(folder)
        manifest = {"format": INDEX_FORMAT, "passages": len(self), **self.settings}
        atomic_write_text(folder / "index.json", json.dumps(manifest, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Retriever:
        """An index `save` wrote; its score matrix and passages stay on disk, memory-mapped."""
        import bm25s

        folder = Path(folder)
        manifest_path = folder / "index.json"
        if not manifest_path.is_file():
            raise ValueError(f"{folder}: not an index (no index.json); build one with `dtb index`")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != INDEX_FORMAT:
            raise ValueError(f"{folder}: index format {manifest.get('format')!r}, this version reads {INDEX_FORMAT}")
        bm25 = bm25s.BM25.load(str(folder / "bm25"), mmap=True)
        settings = {k: v for k, v in manifest.items() if k not in ("format", "passages")}
        return cls(bm25, _PassageStore.open(folder), settings)

    def retrieve(self, query: str, top_k: int = 20) -> list[tuple[Passage, float]]:
        """The `top_k` passages sharing most BM25 weight with the query, best first; none that share no word."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if not isinstance(top_k, int) or not 1 <= top_k <= MAX_RETRIEVE:
            raise ValueError(f"the number of passages to retrieve must be between 1 and {MAX_RETRIEVE}, got {top_k}")
        tokens = _tokenize([query], return_ids=False)
        if not any(t in self.bm25.vocab_dict for t in tokens[0]):
            return []
        found = self.bm25.retrieve(tokens, k=min(top_k, len(self)), show_progress=False, n_threads=1)
        return [
            (self.passages[int(i)], float(score)) for i, score in zip(found.documents[0], found.scores[0]) if score > 0
        ]

    def ask(self, qa: QuestionAnswerer, question: str, retrieve: int = 20, top_k: int = 5, **options) -> dict:
        """Retrieve passages, then read them (`QuestionAnswerer.read`): answers with where they are in the files.

        Each answer gains "source", "record", "line" (where the answer starts) and "source_start" /
        "source_end" (its offsets in the file, or the JSONL record's text); "passages" says how many were read.
        """
        passages = [p for p, _ in self.retrieve(question, retrieve)]
        if not passages:
            return placed({"answers": [], "no_answer": 1.0, "skipped": [], "length_config": None}, passages)
        return placed(qa.read(question, as_documents(passages), top_k=top_k, **options), passages)


def as_documents(passages: Sequence[Passage]) -> list[dict]:
    """Passages as the documents `QuestionAnswerer.read` takes."""
    return [{"id": p.id, "text": p.text} for p in passages]


def placed(result: dict, passages: Sequence[Passage]) -> dict:
    """A read of these passages with each answer placed in its file (`locate`) and the passages counted."""
    for answer in result["answers"]:
        answer.update(locate(passages[answer["document_index"]], answer["start"], answer["end"]))
    return {**result, "passages": len(passages)}


def locate(passage: Passage, start: int, end: int) -> dict:
    """Where characters start..end of a passage lie in its file: source, record, line, offsets."""
    line = passage.line if passage.record is not None else passage.line + passage.text.count("\n", 0, start)
    return {
        "source": passage.source,
        "record": passage.record,
        "line": line,
        "source_start": passage.start + start,
        "source_end": passage.start + end,
    }


class _PassageStore:
    """Passages as JSON lines, found by byte offset: in memory after `build`, memory-mapped after `load`."""

    def __init__(self, data: bytes | mmap.mmap, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets  # (n + 1,) byte offsets of each line

    @classmethod
    def in_memory(cls, passages: Sequence[Passage]) -> _PassageStore:
        lines = [json.dumps(asdict(p), ensure_ascii=False).encode("utf-8") + b"\n" for p in passages]
        offsets = np.zeros(len(lines) + 1, dtype=np.int64)
        np.cumsum([len(line) for line in lines], out=offsets[1:])
        return cls(b"".join(lines), offsets)

    @classmethod
    def open(cls, folder: Path) -> _PassageStore:
        with open(folder / "passages.jsonl", "rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
        return cls(data, np.load(folder / "passages.offsets.npy", mmap_mode="r"))

    def save(self, folder: Path) -> None:
        (folder / "passages.jsonl").write_bytes(bytes(self.data))
        np.save(folder / "passages.offsets.npy", np.asarray(self.offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Passage:
        return Passage(**json.loads(self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]))
