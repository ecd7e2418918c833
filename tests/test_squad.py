"""Tests for reading SQuAD files and scoring them as the official evaluation scripts do."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from dynamic_tinybert.squad import (
    SquadDataset,
    exact_match_score,
    f1_score,
    f1_score_v2,
    load_predictions,
    load_squad,
    normalize_answer,
    score_predictions,
    write_predictions,
)

from conftest import SAMPLE_V11, SAMPLE_V20, full_squad, needs_full_squad, sample_and_full

DEV_V11 = full_squad("dev-v1.1.json.gz")  # None where the full files are not found: the tests below skip
DEV_V20 = full_squad("dev-v2.0.json.gz")
TRAIN_V20 = full_squad("train-v2.0.json.gz")

needs_dev_v11 = needs_full_squad("dev-v1.1.json.gz")
needs_dev_v20 = needs_full_squad("dev-v2.0.json.gz")


@pytest.fixture(scope="module")
def dev_v11() -> SquadDataset:
    return load_squad(DEV_V11)


@pytest.fixture(scope="module")
def dev_v20() -> SquadDataset:
    return load_squad(DEV_V20)


@pytest.fixture(scope="module", params=sample_and_full(SAMPLE_V11, "dev-v1.1.json.gz"))
def v11_file(request) -> Path:
    """The committed dev-v1.1 sample, then the full file where it is found."""
    return request.param


@pytest.fixture(scope="module")
def v11(v11_file: Path) -> SquadDataset:
    return load_squad(v11_file)


@pytest.fixture(scope="module", params=sample_and_full(SAMPLE_V20, "dev-v2.0.json.gz"))
def v20(request) -> SquadDataset:
    """The committed dev-v2.0 sample, then the full file where it is found."""
    return load_squad(request.param)


def _write_squad(path: Path, paragraphs: list[dict], version: str = "1.1") -> Path:
    """Write a one-article SQuAD file; each paragraph is {"context": ..., "qas": [...]}."""
    path.write_text(json.dumps({"version": version, "data": [{"title": "T", "paragraphs": paragraphs}]}))
    return path


def _qa(qid: str, answers: list[str], impossible: bool | None = None) -> dict:
    qa: dict = {
        "id": qid,
        "question": f"q {qid}?",
        "answers": [{"text": a, "answer_start": 0} for a in answers],
    }
    if impossible is not None:
        qa["is_impossible"] = impossible
    return qa


def _tiny_v1(tmp_path: Path, qas: list[dict]) -> SquadDataset:
    return load_squad(_write_squad(tmp_path / "tiny.json", [{"context": "ctx", "qas": qas}]))


def _tiny_v2(tmp_path: Path, qas: list[dict]) -> SquadDataset:
    return load_squad(_write_squad(tmp_path / "tiny2.json", [{"context": "ctx", "qas": qas}], "v2.0"))


def _gold_predictions(dataset: SquadDataset) -> dict[str, str]:
    return {q.id: (q.answers[0] if q.answers else "") for q in dataset.questions}


# ------------------------------------------------------------------------------------------------
# Loading the real files


@pytest.mark.parametrize(
    "sample,name,first",
    [
        pytest.param(SAMPLE_V11, "dev-v1.1.json.gz", 15, id="dev-v1.1", marks=needs_dev_v11),
        pytest.param(SAMPLE_V20, "dev-v2.0.json.gz", 10, id="dev-v2.0", marks=needs_dev_v20),
    ],
)
def test_each_sample_is_the_slice_of_its_dev_file_that_its_readme_describes(sample: Path, name: str, first: int):
    """tests/data/README.md: the first `first` paragraphs of the first article, then the first paragraph of each
    of the next three articles, every field as in the official file."""
    full, cut = (json.loads(gzip.decompress(path.read_bytes())) for path in (full_squad(name), sample))
    head, *rest = full["data"]
    slices = [{**head, "paragraphs": head["paragraphs"][:first]}]
    slices += [{**article, "paragraphs": article["paragraphs"][:1]} for article in rest[:3]]
    assert cut == {"version": full["version"], "data": slices}


@needs_dev_v11
def test_dev_v11_has_10570_answerable_questions(dev_v11: SquadDataset) -> None:
    assert len(dev_v11.questions) == 10_570
    assert all(q.answers and not q.is_impossible for q in dev_v11.questions)


def test_dev_v11_is_version_1_1_and_not_v2(v11: SquadDataset) -> None:
    assert v11.version == "1.1"
    assert not v11.is_v2


@needs_dev_v20
def test_dev_v20_has_11873_questions_of_which_5945_impossible(dev_v20: SquadDataset) -> None:
    assert len(dev_v20.questions) == 11_873
    assert sum(q.is_impossible for q in dev_v20.questions) == 5_945
    assert dev_v20.version == "v2.0" and dev_v20.is_v2


def test_impossible_questions_have_no_gold_answers(v20: SquadDataset) -> None:
    for q in v20.questions:
        assert (q.answers == ()) == q.is_impossible
        assert len(q.answers) == len(q.answer_starts)


@needs_dev_v20
def test_answerable_only_on_dev_v20_keeps_the_5928_answerable_questions() -> None:
    dataset = load_squad(DEV_V20, answerable_only=True)
    assert len(dataset.questions) == 5_928
    assert not any(q.is_impossible for q in dataset.questions)
    article_ids = [qa["id"] for a in dataset.articles for p in a["paragraphs"] for qa in p["qas"]]
    assert article_ids == [q.id for q in dataset.questions]


@needs_full_squad("train-v2.0.json.gz")
def test_answerable_only_on_train_v20_gives_the_86821_v11_training_questions() -> None:
    dataset = load_squad(TRAIN_V20, answerable_only=True)
    assert len(dataset.questions) == 86_821
    assert dataset.version == "v2.0"


def test_first_question_fields_come_from_the_file(v11: SquadDataset) -> None:
    q = v11.questions[0]
    assert q.id == "56be4db0acb8001400a502ec"
    assert q.title == "Super_Bowl_50"
    assert q.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert q.answers == ("Denver Broncos",) * 3
    assert q.answer_starts == (177,) * 3
    assert q.context is v11.articles[0]["paragraphs"][0]["context"]


def test_answer_starts_locate_the_answer_text_in_the_context(v11: SquadDataset) -> None:
    for q in v11.questions:
        for text, start in zip(q.answers, q.answer_starts, strict=True):
            assert q.context[start : start + len(text)] == text


def test_uncompressed_json_loads_the_same_as_gzip(tmp_path: Path, v11_file: Path, v11: SquadDataset) -> None:
    plain = tmp_path / "dev-v1.1.json"
    plain.write_bytes(gzip.decompress(v11_file.read_bytes()))
    assert load_squad(plain) == v11


def test_limit_keeps_the_first_n_questions_and_trims_articles_to_them(v11_file: Path, v11: SquadDataset) -> None:
    # 300 questions run past the first article (Super_Bowl_50 has more), so cut inside a paragraph.
    limited = load_squad(v11_file, limit=300)
    assert limited.questions == v11.questions[:300]
    article_ids = [qa["id"] for a in limited.articles for p in a["paragraphs"] for qa in p["qas"]]
    assert article_ids == [q.id for q in limited.questions]
    assert score_predictions(limited, _gold_predictions(v11))["total"] == 300


def test_limit_does_not_modify_the_untrimmed_articles(v11_file: Path, v11: SquadDataset) -> None:
    limited = load_squad(v11_file, limit=1)
    assert len(limited.articles) == 1 and len(limited.articles[0]["paragraphs"]) == 1
    assert len(v11.articles[0]["paragraphs"][0]["qas"]) > 1


@needs_dev_v20
def test_limit_applies_after_answerable_only() -> None:
    dataset = load_squad(DEV_V20, answerable_only=True, limit=50)
    assert len(dataset.questions) == 50
    assert not any(q.is_impossible for q in dataset.questions)


def test_limit_beyond_the_file_keeps_every_question(v11_file: Path, v11: SquadDataset) -> None:
    assert load_squad(v11_file, limit=1_000_000).questions == v11.questions


def test_negative_limit_is_rejected(tmp_path: Path) -> None:
    path = _write_squad(tmp_path / "s.json", [{"context": "c", "qas": [_qa("1", ["c"])]}])
    with pytest.raises(ValueError, match="limit"):
        load_squad(path, limit=-1)


def test_is_v2_when_a_question_is_impossible_even_without_v2_version(tmp_path: Path) -> None:
    dataset = _tiny_v1(tmp_path, [_qa("1", [], impossible=True)])
    assert dataset.version == "1.1" and dataset.is_v2


# ------------------------------------------------------------------------------------------------
# Load errors


def test_missing_squad_file_raises_file_not_found_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json.gz"
    with pytest.raises(FileNotFoundError, match="nope.json.gz"):
        load_squad(missing)


def test_json_without_a_data_list_is_not_a_squad_file(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"version": "1.1", "rows": []}))
    with pytest.raises(ValueError, match=r"other\.json: not a SQuAD file: .*'data'"):
        load_squad(path)


def test_text_that_is_not_json_is_not_a_squad_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text("hello, world")
    with pytest.raises(ValueError, match=r"notes\.json: not a SQuAD file: not valid JSON"):
        load_squad(path)


def test_gz_file_that_is_not_gzip_is_not_a_squad_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.json.gz"
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(ValueError, match=r"fake\.json\.gz: not a SQuAD file: not a valid gzip file"):
        load_squad(path)


def test_malformed_article_is_not_a_squad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"title": "x"}]}))
    with pytest.raises(ValueError, match=r"bad\.json: not a SQuAD file: data\[0\] has no 'paragraphs'"):
        load_squad(path)


# ------------------------------------------------------------------------------------------------
# Normalisation and per-answer metrics


def test_normalize_answer_lowercases_and_removes_articles() -> None:
    assert normalize_answer("The Denver Broncos") == "denver broncos"
    assert normalize_answer("An apple a day") == "apple day"


def test_normalize_answer_keeps_articles_inside_words() -> None:
    assert normalize_answer("Theater Anna athena") == "theater anna athena"


def test_normalize_answer_deletes_punctuation_without_inserting_spaces() -> None:
    assert normalize_answer("Levi's Stadium, (Santa Clara).") == "levis stadium santa clara"
    assert normalize_answer("The-End") == "theend"


def test_normalize_answer_collapses_whitespace() -> None:
    assert normalize_answer("  1990s \t and\n 2000s  ") == "1990s and 2000s"


def test_exact_match_ignores_case_articles_punctuation_and_spacing() -> None:
    assert exact_match_score("the  Denver Broncos!", "Denver broncos") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0


def test_f1_of_subset_prediction_is_hand_computed_value() -> None:
    # pred {denver, broncos}, gold {denver, broncos, team}: P = 1, R = 2/3, F1 = 0.8
    assert f1_score("the Denver Broncos", "Denver Broncos team") == pytest.approx(0.8)


def test_f1_of_partly_overlapping_spans_is_hand_computed_value() -> None:
    # pred {santa, clara, california}, gold {levis, stadium, in, santa, clara}: P = 2/3, R = 2/5, F1 = 1/2
    assert f1_score("Santa Clara, California", "Levi's Stadium in Santa Clara") == pytest.approx(0.5)


def test_f1_counts_a_repeated_token_only_as_often_as_both_sides_have_it() -> None:
    # common = {x: 1, y: 1}: P = R = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)


def test_f1_without_common_tokens_is_zero() -> None:
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0


def test_v11_f1_scores_two_empty_answers_as_zero() -> None:
    assert f1_score("", "the") == 0.0


def test_v2_f1_scores_empty_answers_as_one_only_when_both_are_empty() -> None:
    assert f1_score_v2("", "") == 1.0
    assert f1_score_v2("a", "") == 1.0  # "a" normalises to empty
    assert f1_score_v2("", "Denver") == 0.0
    assert f1_score_v2("Denver", "") == 0.0
    assert f1_score_v2("the Denver Broncos", "Denver Broncos team") == pytest.approx(0.8)


# ------------------------------------------------------------------------------------------------
# Scoring v1.1


@needs_dev_v11
def test_gold_answers_score_100_on_dev_v11(dev_v11: SquadDataset) -> None:
    scores = score_predictions(dev_v11, _gold_predictions(dev_v11))
    assert scores == {"exact_match": 100.0, "f1": 100.0, "total": 10_570, "missing": []}


@needs_dev_v11
def test_empty_predictions_score_0_on_dev_v11_except_three_punctuation_only_references(
    dev_v11: SquadDataset,
) -> None:
    # Three dev-v1.1 questions have a reference answer "." which normalises to "", so the official
    # v1.1 exact match gives an empty prediction 1 there, while v1.1 F1 of empty vs empty is 0.
    scores = score_predictions(dev_v11, {q.id: "" for q in dev_v11.questions})
    assert scores["exact_match"] == pytest.approx(100 * 3 / 10_570)
    assert scores["f1"] == 0.0


def test_score_takes_the_best_of_multiple_references(tmp_path: Path) -> None:
    dataset = _tiny_v1(tmp_path, [_qa("1", ["Denver Broncos", "the Broncos"])])
    # vs "Denver Broncos": P = R = 1/2 -> 0.5; vs "the Broncos": P = 1/2, R = 1 -> 2/3
    scores = score_predictions(dataset, {"1": "Broncos team"})
    assert scores["exact_match"] == 0.0
    assert scores["f1"] == pytest.approx(100 * 2 / 3)
    assert score_predictions(dataset, {"1": "Broncos"})["exact_match"] == 100.0


def test_v11_missing_prediction_is_listed_and_scores_zero(tmp_path: Path) -> None:
    dataset = _tiny_v1(tmp_path, [_qa("1", ["Paris"]), _qa("2", ["Rome"])])
    scores = score_predictions(dataset, {"1": "Paris"})
    assert scores == {"exact_match": 50.0, "f1": 50.0, "total": 2, "missing": ["2"]}


def test_predictions_for_ids_not_in_the_dataset_are_ignored(tmp_path: Path) -> None:
    dataset = _tiny_v1(tmp_path, [_qa("1", ["Paris"])])
    scores = score_predictions(dataset, {"1": "Paris", "zzz": "anything"})
    assert scores["exact_match"] == 100.0 and scores["total"] == 1


def test_na_probs_on_a_v11_dataset_is_rejected(tmp_path: Path) -> None:
    dataset = _tiny_v1(tmp_path, [_qa("1", ["Paris"])])
    with pytest.raises(ValueError, match="v2.0"):
        score_predictions(dataset, {"1": "Paris"}, na_probs={"1": 0.0})


def test_scoring_a_dataset_without_questions_is_rejected(tmp_path: Path) -> None:
    dataset = load_squad(_write_squad(tmp_path / "s.json", [{"context": "c", "qas": [_qa("1", ["c"])]}]), limit=0)
    with pytest.raises(ValueError, match="no questions"):
        score_predictions(dataset, {})


# ------------------------------------------------------------------------------------------------
# Scoring v2.0


@needs_dev_v20
def test_gold_answers_score_100_on_dev_v20(dev_v20: SquadDataset) -> None:
    scores = score_predictions(dev_v20, _gold_predictions(dev_v20))
    assert scores == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 11_873,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 5_928,
        "NoAns_exact": 100.0,
        "NoAns_f1": 100.0,
        "NoAns_total": 5_945,
        "missing": [],
    }


@needs_dev_v20
def test_empty_predictions_on_dev_v20_get_every_no_answer_right_and_every_answer_wrong(
    dev_v20: SquadDataset,
) -> None:
    scores = score_predictions(dev_v20, {q.id: "" for q in dev_v20.questions})
    assert (scores["NoAns_exact"], scores["NoAns_f1"]) == (100.0, 100.0)
    assert (scores["HasAns_exact"], scores["HasAns_f1"]) == (0.0, 0.0)
    assert scores["exact"] == pytest.approx(100 * 5_945 / 11_873)
    assert scores["f1"] == pytest.approx(100 * 5_945 / 11_873)


@needs_dev_v20
def test_v2_scores_leave_out_noans_keys_when_every_question_is_answerable() -> None:
    dataset = load_squad(DEV_V20, answerable_only=True, limit=200)
    scores = score_predictions(dataset, _gold_predictions(dataset))
    assert not any(k.startswith("NoAns_") for k in scores)
    assert scores["HasAns_total"] == scores["total"] == 200


@needs_dev_v20
def test_na_probs_best_scores_are_at_least_the_thresholded_scores(dev_v20: SquadDataset) -> None:
    rng = random.Random(0)
    raw = json.loads(gzip.decompress(DEV_V20.read_bytes()))
    plausible = {
        qa["id"]: qa["plausible_answers"][0]["text"]
        for a in raw["data"]
        for p in a["paragraphs"]
        for qa in p["qas"]
        if qa.get("plausible_answers")
    }
    # Answer every question (plausible but wrong for unanswerable ones) with noisy no-answer probabilities.
    predictions = {q.id: q.answers[0] if q.answers else plausible.get(q.id, "x") for q in dev_v20.questions}
    na_probs = {q.id: rng.random() * 0.6 + (0.4 if q.is_impossible else 0.0) for q in dev_v20.questions}
    scores = score_predictions(dev_v20, predictions, na_probs=na_probs)
    assert scores["best_f1"] >= scores["f1"]
    assert scores["best_exact"] >= scores["exact"]
    assert scores["best_f1"] > scores["f1"] + 10  # the noise separates the groups well enough to help a lot
    assert scores["best_f1_thresh"] in set(na_probs.values())


def test_best_threshold_matches_a_hand_computed_sweep(tmp_path: Path) -> None:
    dataset = _tiny_v2(tmp_path, [_qa("a", ["Paris"]), _qa("b", [], True), _qa("c", ["Rome"])])
    predictions = {"a": "Paris", "b": "London", "c": "Milan"}
    na_probs = {"a": 0.2, "b": 0.6, "c": 0.4}
    # Start from "no answer everywhere": 1 right (b). Answer a (0.2): 2; c (0.4): still 2; b (0.6): 1.
    scores = score_predictions(dataset, predictions, na_probs=na_probs)
    assert scores["best_exact"] == pytest.approx(100 * 2 / 3)
    assert scores["best_exact_thresh"] == 0.2
    assert scores["best_f1"] == pytest.approx(100 * 2 / 3)
    assert scores["best_f1_thresh"] == 0.2
    assert scores["exact"] == pytest.approx(100 / 3)  # threshold 1.0: every prediction stands


def test_na_prob_above_threshold_turns_a_prediction_into_no_answer(tmp_path: Path) -> None:
    dataset = _tiny_v2(tmp_path, [_qa("a", ["Paris"]), _qa("b", [], True)])
    predictions = {"a": "Paris", "b": "London"}
    na_probs = {"a": 0.1, "b": 0.9}
    assert score_predictions(dataset, predictions, na_probs, na_prob_threshold=0.5)["exact"] == 100.0
    assert score_predictions(dataset, predictions, na_probs, na_prob_threshold=1.0)["exact"] == 50.0


def test_v2_gold_answers_that_normalize_to_empty_are_dropped(tmp_path: Path) -> None:
    dataset = _tiny_v2(tmp_path, [_qa("only_article", ["The"]), _qa("article_and_word", ["the", "Paris"])])
    # "The" alone leaves no gold answers, so the gold is [""] and an empty prediction is right.
    scores = score_predictions(dataset, {"only_article": "", "article_and_word": ""})
    assert scores["HasAns_exact"] == 50.0 and scores["HasAns_f1"] == 50.0


def test_v2_missing_prediction_is_listed_and_scores_zero(tmp_path: Path) -> None:
    dataset = _tiny_v2(tmp_path, [_qa("a", ["Paris"]), _qa("b", [], True), _qa("c", ["Rome"])])
    scores = score_predictions(dataset, {"a": "Paris"}, na_probs={"a": 0.0})
    assert scores["missing"] == ["b", "c"]
    assert scores["total"] == 3
    assert scores["exact"] == pytest.approx(100 / 3)
    assert (scores["HasAns_exact"], scores["NoAns_exact"]) == (50.0, 0.0)
    assert scores["best_exact"] == pytest.approx(100 / 3)


def test_na_probs_without_a_value_for_a_predicted_question_is_rejected(tmp_path: Path) -> None:
    dataset = _tiny_v2(tmp_path, [_qa("a", ["Paris"]), _qa("b", [], True)])
    with pytest.raises(ValueError, match="na_probs"):
        score_predictions(dataset, {"a": "Paris", "b": ""}, na_probs={"a": 0.0})


# ------------------------------------------------------------------------------------------------
# Prediction files


def test_write_predictions_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    predictions = {"1": "Denver Broncos", "2": "Zürich – 東京", "3": ""}
    path = tmp_path / "predictions.json"
    write_predictions(path, predictions)
    assert load_predictions(path) == predictions
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.json"]


def test_write_predictions_writes_official_utf8_json_without_escapes(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    write_predictions(path, {"1": "Zürich"})
    assert path.read_text(encoding="utf-8") == '{"1": "Zürich"}'


def test_write_predictions_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "predictions.json"
    write_predictions(path, {"1": "old"})
    write_predictions(path, {"2": "new"})
    assert load_predictions(path) == {"2": "new"}


def test_write_predictions_rejects_non_string_answers_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_predictions(tmp_path / "p.json", {"1": 3})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_load_predictions_rejects_a_json_list(tmp_path: Path) -> None:
    path = tmp_path / "preds.json"
    path.write_text('["Paris"]')
    with pytest.raises(ValueError, match=r"preds\.json: not a predictions file"):
        load_predictions(path)


def test_load_predictions_rejects_non_string_answers(tmp_path: Path) -> None:
    path = tmp_path / "preds.json"
    path.write_text('{"1": 0.5}')
    with pytest.raises(ValueError, match=r"preds\.json: .*'1'"):
        load_predictions(path)


def test_load_predictions_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "preds.json"
    path.write_text("{oops")
    with pytest.raises(ValueError, match=r"preds\.json: not a predictions file: not valid JSON"):
        load_predictions(path)


def test_load_predictions_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_predictions(tmp_path / "absent.json")
