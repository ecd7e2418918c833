"""Offline retrieval (`retrieval.py`): passages that keep their place in the file, the BM25 index on disk,
and retrieving then reading with answers that point back into the files."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import pytest

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.retrieval import MAX_RETRIEVE, Retriever, passage_spans, read_passages, split_passages

from conftest import make_tiny_tokenizer, tiny_model

NOTES = """# Pets

Cats are small animals that purr.
They sleep most of the day.

# Cities

Wolfgang lives in Berlin, the capital of Germany.

Alice moved to Paris in the year of the game.
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "notes.md").write_text(NOTES, encoding="utf-8")
    (folder / "more.txt").write_text("The Denver Broncos won Super Bowl 50.\n", encoding="utf-8")
    records = [{"id": "sb", "text": "The Carolina Panthers lost Super Bowl 50."}, {"id": 7, "text": "Oslo is cold."}]
    (folder / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    (folder / "script.py").write_text("print('not indexed')\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return QuestionAnswerer.from_pretrained(directory)


def test_passages_are_their_files_text_at_their_offsets():
    for start, end in passage_spans(NOTES, passage_chars=60):
        assert NOTES[start:end] and NOTES[start:end] == NOTES[start:end].strip()


def test_short_paragraphs_join_into_one_passage_up_to_the_limit():
    text = "one.\n\ntwo.\n\nthree."
    assert passage_spans(text, passage_chars=100) == [(0, len(text))]


def test_a_markdown_heading_starts_a_new_passage():
    texts = [NOTES[s:e] for s, e in passage_spans(NOTES, passage_chars=1000)]
    assert [t.split("\n")[0] for t in texts] == ["# Pets", "# Cities"]


def test_a_paragraph_longer_than_a_passage_is_cut_after_a_sentence():
    text = "The first sentence is here. " * 10
    spans = passage_spans(text.strip(), passage_chars=100)
    assert len(spans) > 1
    assert all(e - s <= 100 and text[s:e].endswith(".") for s, e in spans)


def test_a_passage_knows_the_line_it_starts_on():
    passages = split_passages(NOTES, "notes.md", passage_chars=1000)
    assert [p.line for p in passages] == [1, 6]


def test_read_passages_takes_text_markdown_and_jsonl_files_from_a_folder(corpus: Path):
    sources = {Path(p.source).name for p in read_passages([corpus])}
    assert sources == {"notes.md", "more.txt", "records.jsonl"}


def test_jsonl_records_keep_their_id_and_line(corpus: Path):
    records = [p for p in read_passages([corpus]) if p.record is not None]
    assert [(p.record, p.line, p.start) for p in records] == [("sb", 1, 0), ("7", 2, 0)]


def test_a_file_of_another_kind_is_refused_by_name(corpus: Path):
    with pytest.raises(ValueError, match="script.py: not a text, markdown or JSONL file"):
        read_passages([corpus / "script.py"])


def test_a_file_that_is_not_utf8_is_refused_by_name(tmp_path: Path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(ValueError, match=r"bad.txt: not UTF-8 text \(byte 3"):
        read_passages([tmp_path / "bad.txt"])


def test_a_jsonl_line_without_text_is_refused_with_its_line(tmp_path: Path):
    (tmp_path / "r.jsonl").write_text('{"id": 1, "text": "fine"}\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"r.jsonl:2: expected"):
        read_passages([tmp_path / "r.jsonl"])


def test_a_missing_path_is_refused_by_name(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_passages([tmp_path / "nowhere"])


def test_an_index_loads_back_memory_mapped_and_retrieves_the_same(corpus: Path, tmp_path: Path):
    built = Retriever.build(read_passages([corpus]))
    built.save(tmp_path / "idx")
    loaded = Retriever.load(tmp_path / "idx")
    assert isinstance(loaded.bm25.scores["data"], np.memmap) and isinstance(loaded.passages.data, mmap.mmap)
    query = "Where does Wolfgang live?"
    assert [(p.id, s) for p, s in loaded.retrieve(query, 3)] == [(p.id, s) for p, s in built.retrieve(query, 3)]


def test_retrieve_finds_the_passage_that_shares_the_questions_words(corpus: Path):
    found = Retriever.build(read_passages([corpus])).retrieve("Who won Super Bowl 50?", 2)
    assert {p.text for p, _ in found} >= {"The Denver Broncos won Super Bowl 50."}


def test_retrieve_returns_nothing_for_a_query_that_shares_no_word(corpus: Path):
    assert Retriever.build(read_passages([corpus])).retrieve("zebra xylophone", 5) == []


def test_retrieve_refuses_more_passages_than_the_limit(corpus: Path):
    with pytest.raises(ValueError, match=f"between 1 and {MAX_RETRIEVE}"):
        Retriever.build(read_passages([corpus])).retrieve("cats", MAX_RETRIEVE + 1)


def test_loading_a_folder_that_is_not_an_index_says_so(tmp_path: Path):
    with pytest.raises(ValueError, match="not an index"):
        Retriever.load(tmp_path)


def test_ask_answers_point_into_their_files(corpus: Path, tiny_qa: QuestionAnswerer):
    retriever = Retriever.build(read_passages([corpus], passage_chars=60))
    result = retriever.ask(tiny_qa, "Where does Wolfgang live?", retrieve=5, top_k=3)
    assert any(answer["record"] is None for answer in result["answers"])
    for answer in result["answers"]:
        if answer["record"] is not None:
            continue
        text = Path(answer["source"]).read_text(encoding="utf-8")
        assert text[answer["source_start"] : answer["source_end"]] == answer["answer"]
        assert text.count("\n", 0, answer["source_start"]) + 1 == answer["line"]
