"""Reading many documents (`reading.py`, `QuestionAnswerer.read`): ranking across documents, deduplication,
the no-answer probability, the documents accepted and refused, and the score calibration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.features import make_windows
from dynamic_tinybert.frontier import BudgetError
from dynamic_tinybert.reading import (
    SCORES_FILE,
    Document,
    ScoreCalibration,
    expected_calibration_error,
    fit_score_calibration,
    load_score_calibration,
    prepare_documents,
    rank_answers,
    save_score_calibration,
)

from conftest import make_tiny_tokenizer, tiny_model

QUESTION = "who won the super bowl?"
DOCUMENTS = [
    Document("a", "the denver broncos won the super bowl in the year of the game."),
    Document("b", "the panthers lost it in london, and alice lives in paris."),
]


def windows_of(documents: list[Document], max_seq_len: int = 384, doc_stride: int = 128):
    tokenizer = make_tiny_tokenizer()
    return make_windows(tokenizer, [QUESTION] * len(documents), [d.text for d in documents], max_seq_len, doc_stride)


def token_of(window, word: str) -> int:
    """The first context token of `window` (of one of DOCUMENTS) that starts `word`."""
    text = DOCUMENTS[window.example].text
    for i, (sequence, (start, _)) in enumerate(zip(window.encoding.sequence_ids, window.encoding.offsets)):
        if sequence == 1 and text.startswith(word, start):
            return i
    raise AssertionError(f"{word!r} not in window")


def logits_with_span(window, start: int, end: int, value: float, shift: float = 0.0):
    """Logits that favour tokens start..end by `value` over a flat floor, all shifted by `shift`."""
    starts = np.full(window.length, shift, dtype=np.float32)
    ends = np.full(window.length, shift, dtype=np.float32)
    starts[start] += value
    ends[end] += value
    return starts, ends


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory: pytest.TempPathFactory) -> QuestionAnswerer:
    directory = tmp_path_factory.mktemp("tiny384")
    checkpoint.save_checkpoint(tiny_model(max_position_embeddings=384), make_tiny_tokenizer(), directory)
    return QuestionAnswerer.from_pretrained(directory)


@pytest.fixture(scope="module")
def shipped_qa() -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained()


def test_a_span_with_the_larger_margin_ranks_first_whichever_document_it_is_in():
    windows = windows_of(DOCUMENTS)
    a = logits_with_span(windows[0], token_of(windows[0], "denver"), token_of(windows[0], "broncos"), 5.0)
    b = logits_with_span(windows[1], token_of(windows[1], "panthers"), token_of(windows[1], "panthers"), 8.0)
    result = rank_answers(windows, [a[0], b[0]], [a[1], b[1]], DOCUMENTS, top_k=2)
    assert [(x["document_id"], x["answer"]) for x in result["answers"]] == [("b", "panthers"), ("a", "denver broncos")]


def test_shifting_all_of_a_windows_logits_leaves_its_scores_unchanged():
    windows = windows_of(DOCUMENTS[:1])
    span = (token_of(windows[0], "denver"), token_of(windows[0], "broncos"))
    plain = rank_answers(windows, *[[x] for x in logits_with_span(windows[0], *span, 6.0)], DOCUMENTS[:1], top_k=1)
    shifted = rank_answers(
        windows, *[[x] for x in logits_with_span(windows[0], *span, 6.0, shift=40.0)], DOCUMENTS[:1], top_k=1
    )
    assert shifted["answers"][0]["score"] == pytest.approx(plain["answers"][0]["score"])


def test_haystacks_raw_sum_is_kept_as_null_weight_zero():
    windows = windows_of(DOCUMENTS[:1])
    span = (token_of(windows[0], "denver"), token_of(windows[0], "broncos"))
    starts, ends = logits_with_span(windows[0], *span, 6.0, shift=1.0)
    haystack = ScoreCalibration(null_weight=0)
    result = rank_answers(windows, [starts], [ends], DOCUMENTS[:1], top_k=1, calibration=haystack)
    assert result["answers"][0]["score"] == pytest.approx(1 / (1 + math.exp(-0.1 * (7.0 + 7.0))))


def test_overlapping_answers_of_one_document_are_kept_once():
    windows = windows_of(DOCUMENTS[:1])
    starts, ends = logits_with_span(windows[0], token_of(windows[0], "denver"), token_of(windows[0], "broncos"), 6.0)
    result = rank_answers(windows, [starts], [ends], DOCUMENTS[:1], top_k=20)
    spans = [(a["start"], a["end"]) for a in result["answers"]]
    for i, (s1, e1) in enumerate(spans):
        for s2, e2 in spans[i + 1 :]:
            assert min(e1, e2) <= max(s1, s2), f"{(s1, e1)} overlaps {(s2, e2)}"


def test_overlapping_answers_are_all_kept_without_a_threshold():
    windows = windows_of(DOCUMENTS[:1])
    starts, ends = logits_with_span(windows[0], token_of(windows[0], "denver"), token_of(windows[0], "broncos"), 6.0)
    result = rank_answers(windows, [starts], [ends], DOCUMENTS[:1], top_k=20, overlap_threshold=None)
    assert len(result["answers"]) == 20


def test_a_span_seen_by_two_overlapping_windows_is_answered_once():
    filler = " ".join(["the game was in the year of the king"] * 8)
    long_text = f"{filler} the denver broncos won it. {filler}"  # "denver" in the tokens both windows share
    document = Document("long", long_text)
    windows = windows_of([document], max_seq_len=128, doc_stride=100)
    starts, ends = [], []
    for window in windows:
        s = np.zeros(window.length, dtype=np.float32)
        e = np.zeros(window.length, dtype=np.float32)
        for i, (seq, (a, _)) in enumerate(zip(window.encoding.sequence_ids, window.encoding.offsets)):
            if seq == 1 and long_text.startswith("denver", a):
                s[i] = e[i] = 9.0
        starts.append(s)
        ends.append(e)
    assert sum(s.max() > 0 for s in starts) >= 2  # two windows see the span
    answers = rank_answers(windows, starts, ends, [document], top_k=5)["answers"]
    assert sum(a["answer"] == "denver" for a in answers) == 1


def test_no_answer_is_the_product_of_one_minus_each_answers_score():
    windows = windows_of(DOCUMENTS)
    logits = [logits_with_span(w, 1 + w.length // 2, 1 + w.length // 2, 3.0) for w in windows]
    result = rank_answers(windows, [x[0] for x in logits], [x[1] for x in logits], DOCUMENTS, top_k=3)
    assert result["no_answer"] == pytest.approx(np.prod([1 - a["score"] for a in result["answers"]]))


def test_read_gives_answers_that_are_their_documents_text_at_their_offsets(tiny_qa: QuestionAnswerer):
    documents = ["the denver broncos won the super bowl.", {"id": "x", "text": "alice lives in paris.", "meta": {}}]
    result = tiny_qa.read(QUESTION, documents, top_k=4)
    texts = {"0": documents[0], "x": documents[1]["text"]}
    assert 1 <= len(result["answers"]) <= 4
    for answer in result["answers"]:
        assert texts[answer["document_id"]][answer["start"] : answer["end"]] == answer["answer"]
        assert answer["window"]["start"] <= answer["start"] <= answer["end"] <= answer["window"]["end"]
    assert [a["score"] for a in result["answers"]] == sorted((a["score"] for a in result["answers"]), reverse=True)


def test_read_windows_a_document_longer_than_one_window(tiny_qa: QuestionAnswerer):
    long_text = " ".join(["the king of france was born in paris in the year of the game"] * 80)
    result = tiny_qa.read(QUESTION, [long_text], top_k=20, overlap_threshold=None)
    assert max(a["window"]["index"] for a in result["answers"]) > 0


def test_read_refuses_an_empty_document_list(tiny_qa: QuestionAnswerer):
    with pytest.raises(ValueError, match="documents is empty"):
        tiny_qa.read(QUESTION, [])


def test_read_skips_empty_documents_with_a_note(tiny_qa: QuestionAnswerer):
    result = tiny_qa.read(QUESTION, ["  \n", "alice lives in paris."])
    assert result["skipped"] == [{"document_id": "0", "document_index": 0, "reason": "empty"}]
    assert {(a["document_id"], a["document_index"]) for a in result["answers"]} == {("1", 1)}


def test_read_of_only_empty_documents_is_no_answer_for_sure(tiny_qa: QuestionAnswerer):
    result = tiny_qa.read(QUESTION, ["", " "])
    assert result["answers"] == [] and result["no_answer"] == 1.0


def test_read_refuses_the_single_context_no_answer_options(tiny_qa: QuestionAnswerer):
    with pytest.raises(ValueError, match="handle_impossible_answer does not apply"):
        tiny_qa.read(QUESTION, ["alice lives in paris."], handle_impossible_answer=True)


def test_read_refuses_a_budget_on_a_model_without_a_frontier(tiny_qa: QuestionAnswerer):
    with pytest.raises(BudgetError):
        tiny_qa.read(QUESTION, ["alice lives in paris."], budget=0.5)


def test_read_within_a_budget_names_the_length_config_it_ran(shipped_qa: QuestionAnswerer):
    result = shipped_qa.read("Who won Super Bowl 50?", ["The Denver Broncos won Super Bowl 50."], budget=0.7)
    assert result["length_config"] is not None and result["answers"][0]["answer"] == "Denver Broncos"


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ("just one string", "must be a list"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "used twice"),
        ([{"text": 3}], "'text' must be a string"),
        ([{"id": 1.5, "text": "x"}], "'id' must be a string or an integer"),
        ([{"text": "x", "title": "t"}], "unknown key 'title'"),
        ([{"text": "x", "meta": "m"}], "'meta' must be a dict"),
        ([3], "must be a string or a dict"),
    ],
)
def test_prepare_documents_refuses_malformed_documents_by_name(documents, message: str):
    with pytest.raises(ValueError, match=message):
        prepare_documents(documents)


def test_prepare_documents_refuses_more_documents_than_the_limit():
    with pytest.raises(ValueError, match="max_documents"):
        prepare_documents(["a", "b", "c"], max_documents=2)


def test_prepare_documents_refuses_more_characters_than_the_limit():
    with pytest.raises(ValueError, match="max_characters"):
        prepare_documents(["a" * 60, "b" * 60], max_characters=100)


def test_fit_score_calibration_recovers_the_parameters_answers_were_drawn_with():
    rng = np.random.default_rng(0)
    margins = rng.uniform(-10, 30, 20_000)
    correct = rng.random(margins.size) < 1 / (1 + np.exp(-(0.25 * margins - 3.0)))
    fitted = fit_score_calibration(margins, correct)
    assert fitted.scale == pytest.approx(0.25, rel=0.1) and fitted.bias == pytest.approx(-3.0, rel=0.1)


def test_fit_score_calibration_needs_right_and_wrong_answers():
    with pytest.raises(ValueError, match="one right and one wrong"):
        fit_score_calibration([1.0, 2.0, 3.0], [True, True, True])


def test_expected_calibration_error_is_small_for_honest_scores_and_large_for_overconfident_ones():
    rng = np.random.default_rng(0)
    scores = rng.random(50_000)
    correct = rng.random(scores.size) < scores
    assert expected_calibration_error(scores, correct) < 0.01
    assert expected_calibration_error(np.full(scores.size, 0.95), correct) > 0.4


def test_a_saved_score_calibration_loads_back(tmp_path: Path):
    saved = ScoreCalibration(0.3, -2.0, 1.0, "somewhere")
    save_score_calibration(tmp_path, saved)
    assert load_score_calibration(tmp_path) == saved


def test_a_model_folder_without_a_calibration_gets_the_defaults(tmp_path: Path):
    assert load_score_calibration(tmp_path) == ScoreCalibration()


def test_a_malformed_calibration_file_is_refused_by_name(tmp_path: Path):
    (tmp_path / SCORES_FILE).write_text(json.dumps({"scale": "x"}))
    with pytest.raises(ValueError, match=SCORES_FILE):
        load_score_calibration(tmp_path)


def test_the_shipped_model_carries_a_fitted_calibration(shipped_qa: QuestionAnswerer):
    assert shipped_qa.score_calibration.fitted_on is not None
