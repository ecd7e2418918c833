"""QuestionAnswerer: the transformers pipeline's inputs, outputs and answers, plus per-call length configs."""

from __future__ import annotations

import warnings

import pytest

from dynamic_tinybert import LengthConfig, LengthConfigError, QuestionAnswerer
from dynamic_tinybert.squad import load_squad

from conftest import SAMPLE_V11

transformers = pytest.importorskip("transformers")

CONTEXT = "My name is Wolfgang and I live in Berlin. I was born in Munich in 1990."


@pytest.fixture(scope="module")
def qa(minilm_qa_dir) -> QuestionAnswerer:
    return QuestionAnswerer.from_pretrained(minilm_qa_dir)


@pytest.fixture(scope="module")
def hf_pipeline(minilm_qa_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.pipeline("question-answering", model=str(minilm_qa_dir), device="cpu")


@pytest.fixture(scope="module")
def dev_questions():
    """The first 300 questions of dev-v1.1 (all in the committed sample) and their contexts."""
    dataset = load_squad(SAMPLE_V11, limit=300)
    return [q.question for q in dataset.questions], [q.context for q in dataset.questions]


def agreement(ours: list[dict], theirs: list[dict]) -> float:
    same = [(a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"]) for a, b in zip(ours, theirs)]
    return sum(same) / len(same)


def assert_answers_and_offsets_match_the_transformers_pipeline(qa, hf_pipeline, questions, contexts):
    ours = qa(question=questions, context=contexts)
    theirs = [hf_pipeline(question=q, context=c) for q, c in zip(questions, contexts)]
    assert agreement(ours, theirs) >= 0.99
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < 1e-4


@pytest.mark.slow
def test_answers_and_offsets_match_the_transformers_pipeline_on_300_squad_questions(qa, hf_pipeline, dev_questions):
    assert_answers_and_offsets_match_the_transformers_pipeline(qa, hf_pipeline, *dev_questions)


def test_answers_and_offsets_match_the_transformers_pipeline_on_every_12th_of_those_questions(
    qa, hf_pipeline, dev_questions
):
    """The check above on 25 of its 300 questions, few enough for the fast tier: here >= 0.99 means all 25 agree."""
    assert_answers_and_offsets_match_the_transformers_pipeline(qa, hf_pipeline, *(v[::12] for v in dev_questions))


@pytest.mark.parametrize(
    "options",
    [
        dict(top_k=3),
        dict(handle_impossible_answer=True),
        dict(max_seq_len=64, doc_stride=16),  # many windows per context: merging across windows
        dict(max_answer_len=3, align_to_words=False),
    ],
    ids=["top_k", "impossible", "short-windows", "short-answers"],
)
def test_pipeline_options_give_the_same_answers_as_transformers(qa, hf_pipeline, dev_questions, options):
    questions, contexts = (values[:25] for values in dev_questions)
    ours = qa(question=questions, context=contexts, **options)
    theirs = [hf_pipeline(question=q, context=c, **options) for q, c in zip(questions, contexts)]
    flatten = lambda results: [a for r in results for a in (r if isinstance(r, list) else [r])]  # noqa: E731
    assert agreement(flatten(ours), flatten(theirs)) >= 0.96


def test_questions_longer_than_64_tokens_get_the_pipelines_answers(qa, hf_pipeline, dev_questions):
    """With a fast tokenizer the pipeline keeps a long question whole; so does the project by default."""
    questions, contexts = (values[:10] for values in dev_questions)
    preamble = "Reading the passage below carefully and thinking about every sentence in it, tell me: " * 4
    long_questions = [preamble + q for q in questions]
    assert all(len(qa.tokenizer.encode(q, add_special_tokens=False).ids) > 64 for q in long_questions)
    ours = qa(question=long_questions, context=contexts)
    theirs = [hf_pipeline(question=q, context=c) for q, c in zip(long_questions, contexts)]
    assert agreement(ours, theirs) == 1.0
    cut = qa(question=long_questions, context=contexts, max_question_len=8)  # cutting, when asked, changes them
    assert agreement(cut, theirs) < 1.0


def test_one_pair_gives_one_answer_dict_with_offsets_into_the_context(qa):
    answer = qa(question="Where do I live?", context=CONTEXT)
    assert set(answer) == {"score", "start", "end", "answer"}
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]
    assert 0.0 < answer["score"] <= 1.0


def test_every_input_form_of_the_pipeline_is_accepted(qa):
    pair = dict(question="Where do I live?", context=CONTEXT)
    expected = qa(**pair)
    assert qa(pair["question"], pair["context"]) == expected
    assert qa(pair) == expected
    assert qa([pair, pair]) == [expected, expected]
    assert qa(question=[pair["question"]] * 2, context=[CONTEXT] * 2) == [expected, expected]
    assert qa(question=[pair["question"]] * 2, context=CONTEXT) == [expected, expected]


def test_top_k_returns_a_list_best_first(qa):
    answers = qa(question="Where was I born?", context=CONTEXT, top_k=3)
    assert len(answers) == 3
    assert answers[0]["score"] >= answers[1]["score"] >= answers[2]["score"]


def test_handle_impossible_answer_adds_the_empty_answer_as_a_candidate(qa):
    answers = qa(question="Where was I born?", context=CONTEXT, top_k=500, handle_impossible_answer=True)
    assert any(a["answer"] == "" and a["start"] == a["end"] == 0 for a in answers)


def test_batching_does_not_change_answers_under_a_dropping_config(qa, dev_questions):
    questions, contexts = (values[:12] for values in dev_questions)
    config = LengthConfig.ratios([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    batched = qa(question=questions, context=contexts, length_config=config, batch_size=12)
    one_by_one = [qa(question=q, context=c, length_config=config, batch_size=1) for q, c in zip(questions, contexts)]
    assert [(a["answer"], a["start"]) for a in batched] == [(a["answer"], a["start"]) for a in one_by_one]
    for a, b in zip(batched, one_by_one):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)


def test_length_config_applies_to_one_call_only(qa):
    pair = dict(question="Where do I live?", context=CONTEXT)
    full = qa(**pair)
    dropped = qa(**pair, length_config=LengthConfig.tokens([12, 8, 6, 4, 2, 1]))
    assert dropped["score"] != full["score"]
    assert qa(**pair) == full


def test_a_default_length_config_is_used_until_a_call_overrides_it(minilm_qa_dir, qa):
    pair = dict(question="Where do I live?", context=CONTEXT)
    config = LengthConfig.ratios([0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    fast = QuestionAnswerer.from_pretrained(minilm_qa_dir, length_config=config)
    assert fast(**pair) == qa(**pair, length_config=config)
    assert fast(**pair, length_config=None) == qa(**pair)


@pytest.mark.parametrize(
    "call,message",
    [
        (dict(question="q"), "both question and context are required"),
        (dict(question="", context=CONTEXT), "question 0 is empty"),
        (dict(question="q", context="   "), "context 0 is empty"),
        (dict(question=["a", "b", "c"], context=["x", "y"]), "3 questions but 2 contexts"),
        (dict(question=3, context=CONTEXT), "question must be a string or a list of strings"),
        (dict(question=["q", 3], context=CONTEXT), "question 1 must be a string"),
        (dict(question="q", context=CONTEXT, top_k=0), "top_k must be an integer >= 1"),
        (dict(question="q", context=CONTEXT, max_answer_len=0), "max_answer_len must be an integer >= 1"),
        (dict(question="q", context=CONTEXT, doc_stride=400), r"doc_stride \(400\) must be smaller"),
        (dict(question="q", context=CONTEXT, max_seq_len=1024), "exceeds the model's 512 positions"),
        (dict(question="q", context=CONTEXT, length_config=[0.5] * 6), "length_config must be a LengthConfig"),
        (dict(question="q", context=CONTEXT, bogus=1), "bogus"),
    ],
)
def test_bad_input_is_a_clear_value_error(qa, call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        qa(**call)


def test_a_length_config_for_another_depth_is_refused(qa):
    with pytest.raises(LengthConfigError, match="has 3 entries; the model has 6 layers"):
        qa(question="q", context=CONTEXT, length_config=LengthConfig.ratios([1.0, 0.5, 0.5]))


def test_a_dict_without_context_is_refused(qa):
    with pytest.raises(ValueError, match="input 0 has no 'context' key"):
        qa({"question": "q"})
