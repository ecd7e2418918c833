"""The Haystack component: a real haystack-ai Pipeline (in-memory store, BM25 retriever, this reader) on
SQuAD passages, answering as Haystack's ExtractiveReader did."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here; set before haystack loads
haystack = pytest.importorskip("haystack", reason="the [haystack] extra is not installed")

from haystack import Document, Pipeline  # noqa: E402
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever  # noqa: E402
from haystack.document_stores.in_memory import InMemoryDocumentStore  # noqa: E402

from dynamic_tinybert.integrations.haystack import ExtractiveReader  # noqa: E402
from dynamic_tinybert.squad import load_squad  # noqa: E402

from conftest import SAMPLE_V11  # noqa: E402

MODULE = "dynamic_tinybert.integrations.haystack"


@pytest.fixture(scope="module")
def squad_pipeline() -> Pipeline:
    paragraphs = list(dict.fromkeys(q.context for q in load_squad(SAMPLE_V11).questions))
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=text, meta={"paragraph": i}) for i, text in enumerate(paragraphs)])
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(store, top_k=5))
    pipeline.add_component("reader", ExtractiveReader(top_k=3))
    pipeline.connect("retriever.documents", "reader.documents")
    return pipeline


def ask(pipeline: Pipeline, query: str, **reader) -> list:
    return pipeline.run({"retriever": {"query": query}, "reader": {"query": query, **reader}})["reader"]["answers"]


def test_the_reader_answers_a_squad_question_from_retrieved_passages(squad_pipeline: Pipeline):
    answers = ask(squad_pipeline, "Which NFL team represented the AFC at Super Bowl 50?")
    assert answers[0].data == "Denver Broncos"
    assert answers[0].document.content[answers[0].document_offset.start : answers[0].document_offset.end] == (
        "Denver Broncos"
    )


def test_the_answers_include_the_no_answer_in_score_order(squad_pipeline: Pipeline):
    answers = ask(squad_pipeline, "Which NFL team represented the AFC at Super Bowl 50?")
    assert len(answers) == 4 and sum(a.data is None for a in answers) == 1
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


def test_a_budget_per_run_reads_at_a_frontier_point(squad_pipeline: Pipeline):
    answers = ask(squad_pipeline, "Which NFL team represented the AFC at Super Bowl 50?", budget=0.7)
    assert answers[0].meta["length_config"] is not None


def test_no_documents_give_only_the_no_answer():
    answers = ExtractiveReader().run(query="Who won?", documents=[])["answers"]
    assert [(a.data, a.score) for a in answers] == [(None, 1.0)]


def test_the_reader_serialises_with_its_pipeline(squad_pipeline: Pipeline):
    squad_pipeline.get_component("reader").budget = None
    loaded = Pipeline.loads(squad_pipeline.dumps(), allowed_modules=[MODULE])
    assert loaded.get_component("reader").top_k == 3


def test_two_length_choices_are_refused_at_construction():
    with pytest.raises(ValueError, match="only one of budget, latency_ms and length_config"):
        ExtractiveReader(budget=0.5, length_config="0.9,0.8,0.7,0.6,0.5,0.4")
