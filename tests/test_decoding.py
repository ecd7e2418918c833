"""Span decoding scores spans exactly as the transformers question-answering pipeline does."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from dynamic_tinybert.decoding import best_spans, decode_answers
from dynamic_tinybert.features import make_windows

from conftest import make_tiny_tokenizer

qa_pipeline = pytest.importorskip("transformers.pipelines.question_answering")


def random_window(rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    start, end = rng.normal(size=length) * 3, rng.normal(size=length) * 3
    context = np.zeros(length, dtype=bool)
    context[length // 4 : length - 1] = True  # [CLS] question [SEP] context [SEP]
    return start, end, context


@pytest.mark.parametrize("top_k,max_answer_len", [(1, 15), (5, 15), (32, 30), (12, 1)])
def test_best_spans_match_the_transformers_pipeline(top_k: int, max_answer_len: int) -> None:
    rng = np.random.default_rng(top_k)
    for length in (8, 40, 200):
        start, end, context = random_window(rng, length)
        p_mask = (~context).astype(int)
        p_mask[0] = 0  # the pipeline keeps [CLS] unmasked
        starts, ends, scores, null = qa_pipeline.select_starts_ends(
            start[None], end[None], p_mask, np.ones((1, length), dtype=int), 1_000_000, top_k, True, max_answer_len
        )
        ours = best_spans(start, end, context, top_k, max_answer_len)
        np.testing.assert_array_equal(ours.starts, starts)
        np.testing.assert_array_equal(ours.ends, ends)
        np.testing.assert_allclose(ours.scores, scores, rtol=1e-12)
        assert ours.null_score == pytest.approx(null, rel=1e-12)


def test_best_spans_match_the_transformers_pipeline_on_many_float32_windows() -> None:
    """The band of short spans ranks as the pipeline's whole (T, T) matrix does, in the model's float32, and
    windows with fewer scoring spans than top_k (a context of a token or two) fall back to that matrix."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        length = int(rng.integers(3, 120))
        start, end = (rng.normal(size=length).astype(np.float32) * 3 for _ in range(2))
        context = np.zeros(length, dtype=bool)
        first = int(rng.integers(1, length))
        context[first : first + int(rng.integers(0, length - first + 1))] = True
        top_k, max_answer_len = int(rng.choice([1, 3, 12, 32])), int(rng.integers(1, 40))
        p_mask = (~context).astype(int)
        p_mask[0] = 0
        starts, ends, scores, null = qa_pipeline.select_starts_ends(
            start[None], end[None], p_mask, np.ones((1, length), dtype=int), 1_000_000, top_k, True, max_answer_len
        )
        ours = best_spans(start, end, context, top_k, max_answer_len)
        np.testing.assert_array_equal(ours.starts, starts)
        np.testing.assert_array_equal(ours.ends, ends)
        np.testing.assert_array_equal(ours.scores, scores)
        assert ours.null_score == null


def test_spans_never_leave_the_context_and_respect_max_answer_len() -> None:
    rng = np.random.default_rng(0)
    start, end, context = random_window(rng, 60)
    spans = best_spans(start, end, context, top_k=50, max_answer_len=4)
    assert len(spans.starts) > 0
    assert context[spans.starts].all() and context[spans.ends].all()
    assert ((spans.ends - spans.starts) >= 0).all() and ((spans.ends - spans.starts) < 4).all()
    assert (np.diff(spans.scores) <= 0).all()  # best first


@pytest.fixture
def tokenizer(tmp_path) -> Tokenizer:
    return make_tiny_tokenizer()


def logits_pointing_at(window, first: int, last: int, null: float = -5.0) -> tuple[np.ndarray, np.ndarray]:
    start, end = np.full(window.length, -5.0), np.full(window.length, -5.0)
    start[first], end[last] = 5.0, 5.0
    start[0] = end[0] = null
    return start, end


def test_answer_is_the_context_text_under_the_best_span(tokenizer) -> None:
    context = "the king lived in paris"
    [window] = make_windows(tokenizer, ["who lived in paris"], [context])
    tokens = window.encoding.tokens
    first = tokens.index("king")
    start, end = logits_pointing_at(window, first, first)
    [answer] = decode_answers(context, [window], [start], [end])
    assert answer["answer"] == "king" and context[answer["start"] : answer["end"]] == "king"


def test_answers_with_the_same_text_in_two_windows_add_their_scores(tokenizer) -> None:
    context = "paris is the capital . " * 6 + "rome"
    windows = make_windows(tokenizer, ["what is the capital"], [context], max_seq_len=20, doc_stride=4)
    assert len(windows) > 1
    logits = [
        logits_pointing_at(w, w.encoding.tokens.index("paris"), w.encoding.tokens.index("paris")) for w in windows
    ]
    single = decode_answers(context, windows[:1], [logits[0][0]], [logits[0][1]])[0]["score"]
    merged = decode_answers(context, windows, [s for s, _ in logits], [e for _, e in logits])
    assert merged[0]["answer"] == "paris"
    assert merged[0]["score"] > 1.5 * single


def test_empty_answer_wins_when_cls_scores_highest_and_impossible_answers_are_allowed(tokenizer) -> None:
    context = "the king lived in paris"
    [window] = make_windows(tokenizer, ["who lived in rome"], [context])
    first = window.encoding.tokens.index("king")
    start, end = logits_pointing_at(window, first, first, null=9.0)
    assert decode_answers(context, [window], [start], [end])[0]["answer"] == "king"
    best = decode_answers(context, [window], [start], [end], handle_impossible_answer=True)[0]
    assert best == {"score": pytest.approx(best["score"]), "start": 0, "end": 0, "answer": ""}


def test_null_threshold_makes_the_empty_answer_harder_to_pick(tokenizer) -> None:
    context = "the king lived in paris"
    [window] = make_windows(tokenizer, ["who lived in rome"], [context])
    first = window.encoding.tokens.index("king")
    start, end = logits_pointing_at(window, first, first, null=5.5)  # null slightly above the span
    options = dict(handle_impossible_answer=True)
    assert decode_answers(context, [window], [start], [end], **options)[0]["answer"] == ""
    assert decode_answers(context, [window], [start], [end], null_threshold=5.0, **options)[0]["answer"] == "king"


def test_top_k_returns_that_many_distinct_answers_best_first(tokenizer) -> None:
    context = "the king lived in paris with the queen"
    [window] = make_windows(tokenizer, ["who lived in paris"], [context])
    rng = np.random.default_rng(1)
    start, end = rng.normal(size=window.length), rng.normal(size=window.length)
    answers = decode_answers(context, [window], [start], [end], top_k=4)
    assert len(answers) == 4
    assert len({a["answer"].lower() for a in answers}) == 4
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)


def test_align_to_words_widens_a_subword_span_to_the_whole_word(tokenizer) -> None:
    context = "born in 1990 in paris"
    [window] = make_windows(tokenizer, ["when"], [context])
    tokens = window.encoding.tokens
    piece = tokens.index("##9")  # inside "1990" = 1 ##9 ##9 ##0
    start, end = logits_pointing_at(window, piece, piece)
    assert decode_answers(context, [window], [start], [end])[0]["answer"] == "1990"
    assert decode_answers(context, [window], [start], [end], align_to_words=False)[0]["answer"] == "9"
