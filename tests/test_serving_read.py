"""`POST /read`: one question, many documents (or passages retrieved from the server's index), over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_frontier import FRONTIER

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.retrieval import Retriever, read_passages
from dynamic_tinybert.serving import ServerSettings, create_app

QUESTION = "where does alice live ?"
DOCUMENTS = [
    "carol lives in rome . bob lives in paris .",
    {"id": "notes", "text": "alice lives in oslo . dave lives in madrid .", "meta": {"kind": "notes"}},
    "   ",
    "erin lives in vienna .",
]


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


def same_read(served: dict, direct: dict) -> None:
    assert served["no_answer"] == pytest.approx(direct["no_answer"], rel=1e-5)
    assert served["skipped"] == direct["skipped"] and served.get("length_config") == direct["length_config"]
    assert len(served["answers"]) == len(direct["answers"])
    for s, d in zip(served["answers"], direct["answers"]):
        assert {k: v for k, v in s.items() if v is not None and k not in ("score", "margin")} == {
            k: v for k, v in d.items() if v is not None and k not in ("score", "margin")
        }
        assert s["score"] == pytest.approx(d["score"], rel=1e-5)


@pytest.mark.parametrize("parameters", [{}, {"top_k": 3, "length_config": "0.8,0.6,0.4+q"}, {"budget": 0.6}])
def test_read_over_http_is_qa_read(qa, parameters):
    response = TestClient(create_app(qa)).post(
        "/read", json={"question": QUESTION, "documents": DOCUMENTS, "parameters": parameters}
    )
    assert response.status_code == 200, response.text
    options = dict(parameters)
    top_k = options.pop("top_k", 5)
    if "length_config" in options:
        from dynamic_tinybert import LengthConfig

        options["length_config"] = LengthConfig.parse(options["length_config"])
    same_read(response.json(), qa.read(QUESTION, DOCUMENTS, top_k=top_k, **options))
    assert response.json()["skipped"] == [{"document_id": "2", "document_index": 2, "reason": "empty"}]
    assert "X-Length-Config" in response.headers


@pytest.fixture
def index(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "people.md").write_text("# People\n\ncarol lives in rome .\n\nalice lives in oslo .\n")
    (folder / "more.txt").write_text("bob lives in paris .\n")
    return Retriever.build(read_passages([folder])).save(tmp_path / "idx")


def test_read_without_documents_retrieves_from_the_servers_index_and_places_answers_in_files(qa, index):
    retriever = Retriever.load(index)
    client = TestClient(create_app(qa, retriever=retriever))
    served = client.post("/read", json={"question": QUESTION, "retrieve": 5}).json()
    direct = retriever.ask(qa, QUESTION, retrieve=5, top_k=5)
    same_read(served, direct)
    assert served["passages"] == direct["passages"] > 0
    assert all(answer["source"].endswith((".md", ".txt")) and answer["line"] >= 1 for answer in served["answers"])


@pytest.mark.parametrize(
    "body, settings, fragments",
    [
        ({"question": QUESTION}, {}, ["documents", "no --index"]),
        ({"question": QUESTION, "documents": []}, {}, ["documents", "at least 1"]),
        ({"question": QUESTION, "documents": ["a"] * 5}, {"max_documents": 4}, ["documents: 5", "--max-documents"]),
        ({"question": QUESTION, "documents": ["alice " * 50]}, {"max_context_chars": 100}, ["--max-context-chars"]),
        ({"question": QUESTION, "documents": ["a", "b"], "retrieve": 3}, {}, ["retrieve", "--index"]),
        ({"question": QUESTION, "documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}, {}, ["twice"]),
        ({"question": QUESTION, "documents": ["a"], "parameters": {"top_k": 50}}, {}, ["--max-top-k"]),
        (
            {"question": QUESTION, "documents": ["a"], "parameters": {"handle_impossible_answer": True}},
            {},
            ["handle_impossible_answer"],
        ),
        ({"question": "", "documents": ["a"]}, {}, ["question"]),
        ({"question": QUESTION, "documents": [{"text": 3}]}, {}, ["documents"]),
    ],
)
def test_bad_reads_are_422_naming_the_problem(qa, body, settings, fragments):
    response = TestClient(create_app(qa, settings=ServerSettings(**settings))).post("/read", json=body)
    assert response.status_code == 422, response.text
    assert all(fragment in response.json()["detail"] for fragment in fragments), response.json()["detail"]


def test_an_index_that_shares_no_word_with_the_question_reads_nothing(qa, index):
    client = TestClient(create_app(qa, retriever=Retriever.load(index)))
    served = client.post("/read", json={"question": "zzz qqq ?"}).json()
    assert served["answers"] == [] and served["no_answer"] == 1.0 and served["passages"] == 0
