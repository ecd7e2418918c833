"""`QuestionAnswerer.explain`: the answers of a traced run and what each layer of it kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_frontier import FRONTIER, MID

from dynamic_tinybert import QuestionAnswerer

QUESTION = "where does alice live ?"
CONTEXT = "carol lives in rome . alice lives in oslo . bob lives in paris ."
LONG_CONTEXT = " ".join(f"{name} lives in {city} ." for name, city in [("carol", "rome"), ("bob", "paris")] * 6)


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    FRONTIER.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


def test_the_answers_are_those_of_an_ordinary_call_with_the_same_options(qa):
    explained = qa.explain(QUESTION, CONTEXT, top_k=3, budget=0.6)
    direct = qa(question=QUESTION, context=CONTEXT, top_k=3, budget=0.6)
    assert [(a["answer"], a["start"], a["end"]) for a in explained.answers] == [
        (a["answer"], a["start"], a["end"]) for a in direct
    ]
    assert [a["score"] for a in explained.answers] == pytest.approx([a["score"] for a in direct], rel=1e-4)


def test_a_budget_runs_the_frontiers_choice_and_each_layer_keeps_its_count(qa):
    explained = qa.explain(QUESTION, CONTEXT, budget=0.6)
    assert explained.length_config == MID.length_config
    expected = MID.length_config.keep_counts(torch.tensor([len(explained.tokens)]))[0].tolist()
    assert [len(layer) for layer in explained.kept] == expected
    assert explained.macs_ratio < 1.0


def test_at_full_length_every_layer_keeps_every_token(qa):
    explained = qa.explain(QUESTION, CONTEXT)
    assert explained.kept == [list(range(len(explained.tokens)))] * qa.model.config.num_hidden_layers
    assert explained.length_config is None and explained.to_dict()["length_config"] == "full"  # as the service says
    assert explained.macs_ratio == 1.0


def test_offsets_place_each_token_in_the_question_or_the_context(qa):
    explained = qa.explain(QUESTION, CONTEXT)
    for token, segment, (start, end) in zip(explained.tokens, explained.segments, explained.offsets):
        if segment is not None:
            assert (QUESTION, CONTEXT)[segment][start:end] == token.removeprefix("##")
    assert explained.segments[0] is None and explained.segments[-1] is None  # [CLS] ... [SEP]


def test_the_window_described_is_the_one_holding_the_best_answer(qa):
    explained = qa.explain(QUESTION, LONG_CONTEXT, max_seq_len=24, doc_stride=4)
    assert explained.windows > 1
    best = explained.answers[0]
    spans = [explained.offsets[i] for i in explained.answer_tokens]
    assert spans and all(explained.segments[i] == 1 for i in explained.answer_tokens)
    assert spans[0][0] <= best["start"] and best["end"] <= spans[-1][1]
    assert LONG_CONTEXT[spans[0][0] : spans[-1][1]] == best["answer"]


def test_an_empty_best_answer_outlines_no_tokens(qa):
    explained = qa.explain(QUESTION, CONTEXT, handle_impossible_answer=True, null_threshold=-100.0)
    assert explained.answers[0]["answer"] == ""
    assert explained.answer_tokens == [] and explained.window == 0


def test_the_dict_form_is_plain_json_values(qa):
    as_dict = qa.explain(QUESTION, CONTEXT, budget=0.6).to_dict()
    assert as_dict["length_config"] == str(MID.length_config)
    assert isinstance(as_dict["offsets"][1], list) and len(as_dict["kept"]) == qa.model.config.num_hidden_layers


def test_bad_options_are_refused_as_a_call_refuses_them(qa):
    with pytest.raises(ValueError, match="only one of"):
        qa.explain(QUESTION, CONTEXT, budget=0.6, length_config=MID.length_config)
