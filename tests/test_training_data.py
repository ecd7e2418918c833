"""Training data: SQuAD questions -> labelled windows, their on-disk cache, length-bucketed batches, hold-outs.

Everything runs on the tiny character-level vocabulary of conftest and the synthetic "who lives where" task,
with windows of 64 tokens and a stride of 16, so a context of a few dozen facts spans several windows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import CITIES, NAMES, synthetic_dataset, write_squad_file
from tokenizers.implementations import BertWordPieceTokenizer

from dynamic_tinybert.features import make_windows
from dynamic_tinybert.squad import SquadDataset, SquadQuestion, load_squad
from dynamic_tinybert.training import data
from dynamic_tinybert.training.data import (
    Features,
    WindowSettings,
    cached_features,
    collate,
    epoch_batches,
    label_windows,
    training_data,
)

from conftest import make_tiny_tokenizer, tiny_vocab

SETTINGS = WindowSettings(max_seq_len=64, doc_stride=16)
FIELDS = ("ids", "type_ids", "offsets", "start", "end")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def facts_context(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(NAMES)} lives in {rng.choice(CITIES)} ." for _ in range(count))


def question(qid: str, context: str, answer: str | None, start: int | None = None) -> SquadQuestion:
    """A question about `context` whose answer is the given text at `start` (default: its first occurrence)."""
    if answer is None:
        return SquadQuestion(qid, "where does alice live ?", context, "t", (), (), True)
    start = context.index(answer) if start is None else start
    assert context[start : start + len(answer)] == answer
    return SquadQuestion(qid, "where does alice live ?", context, "t", (answer,), (start,), False)


def windows_of(tokenizer, questions, settings=SETTINGS):
    """The windows label_windows labels, in the same order (to read their character offsets)."""
    return make_windows(
        tokenizer,
        [q.question for q in questions],
        [q.context for q in questions],
        settings.max_seq_len,
        settings.doc_stride,
        settings.max_question_len,
    )


def context_char_range(window) -> tuple[int, int]:
    inside = np.flatnonzero(window.context_mask)
    return window.encoding.offsets[inside[0]][0], window.encoding.offsets[inside[-1]][1]


def multi_article_file(path: Path, articles: int, per_article: int) -> Path:
    """A SQuAD file of `articles` articles with distinct titles and question ids."""
    data_ = []
    for a in range(articles):
        dataset = synthetic_dataset(per_article, seed=a, facts=2, prefix=f"article{a}-")
        data_.append({**dataset.articles[0], "title": f"article-{a}"})
    path.write_text(json.dumps({"version": "1.1", "data": data_}))
    return path


def assert_same_features(a: Features, b: Features) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


# --------------------------------------------------------------------------------------------------
# label_windows


def test_labelled_span_text_equals_the_answer(tokenizer):
    questions = synthetic_dataset(30, seed=0, facts=4).questions
    features = label_windows(tokenizer, questions, SETTINGS)
    windows = windows_of(tokenizer, questions)
    assert len(features) == len(windows) == len(questions)  # short contexts: one window each
    for i, window in enumerate(windows):
        q = questions[window.example]
        np.testing.assert_array_equal(features.ids[features.offsets[i] : features.offsets[i + 1]], window.encoding.ids)
        start, end = int(features.start[i]), int(features.end[i])
        assert 0 < start <= end
        assert window.context_mask[start] and window.context_mask[end]
        text = q.context[window.encoding.offsets[start][0] : window.encoding.offsets[end][1]]
        assert text == q.answers[0]


def test_multi_token_answer_span_text_equals_the_answer(tokenizer):
    context = facts_context(6, seed=1)
    answer = context.split(" . ")[2] + " ."  # "name lives in city ." : five tokens
    q = question("multi", context, answer, start=context.index(answer))
    features = label_windows(tokenizer, [q], SETTINGS)
    [window] = windows_of(tokenizer, [q])
    start, end = int(features.start[0]), int(features.end[0])
    assert end - start == 4
    assert context[window.encoding.offsets[start][0] : window.encoding.offsets[end][1]] == answer


def test_windows_without_the_whole_answer_are_labelled_cls(tokenizer):
    context = facts_context(40, seed=2)  # ~200 context tokens: several windows of 64
    sentences = context.split(" . ")
    partial_seen = False
    for k in range(0, 36, 3):  # answers of three facts (15 tokens), all along the context
        answer = " . ".join(sentences[k : k + 3])
        start = len(" . ".join(sentences[:k])) + (3 if k else 0)
        q = question(f"q{k}", context, answer, start)
        features = label_windows(tokenizer, [q], SETTINGS)
        windows = windows_of(tokenizer, [q])
        assert len(windows) >= 4
        containing = 0
        for i, window in enumerate(windows):
            first, last = context_char_range(window)
            whole = first <= start and last >= start + len(answer)
            overlaps = first < start + len(answer) and last > start
            if whole:
                containing += 1
                assert features.start[i] > 0
                span = window.encoding.offsets[features.start[i]][0], window.encoding.offsets[features.end[i]][1]
                assert context[span[0] : span[1]] == answer
            else:
                assert (features.start[i], features.end[i]) == (0, 0)
                partial_seen |= overlaps
        assert containing >= 1  # a stride of 16 tokens keeps every answer of <= 16 tokens whole somewhere
    assert partial_seen, "no window cut an answer: the test did not exercise partial answers"


def test_unanswerable_questions_are_labelled_cls(tokenizer):
    short, long = facts_context(3, seed=3), facts_context(40, seed=4)
    questions = [
        question("no-short", short, None),
        question("yes-short", short, short.split(" . ")[1]),
        question("no-long", long, None),
        SquadQuestion("no-but-listed", "who ?", short, "t", ("rome",), (0,), True),  # impossible wins
    ]
    features = label_windows(tokenizer, questions, SETTINGS)
    windows = windows_of(tokenizer, questions)
    assert len(features) == len(windows) > len(questions)
    for i, window in enumerate(windows):
        labels = (int(features.start[i]), int(features.end[i]))
        if questions[window.example].id == "yes-short":
            assert labels != (0, 0)
        else:
            assert labels == (0, 0)


def test_features_are_flat_arrays_consistent_with_offsets_and_lengths(tokenizer):
    long = facts_context(40, seed=6)
    questions = synthetic_dataset(10, seed=5).questions + [question("long", long, long.split(" . ")[20])]
    features = label_windows(tokenizer, questions, SETTINGS)
    windows = windows_of(tokenizer, questions)
    n = len(windows)
    assert features.ids.dtype == np.int32 and features.type_ids.dtype == np.int8
    assert features.offsets.dtype == np.int64 and features.start.dtype == features.end.dtype == np.int32
    assert features.ids.ndim == features.type_ids.ndim == features.offsets.ndim == 1
    assert len(features) == n and features.offsets.shape == (n + 1,) and features.end.shape == (n,)
    assert features.offsets[0] == 0 and features.offsets[-1] == len(features.ids) == len(features.type_ids)
    np.testing.assert_array_equal(features.lengths, [w.length for w in windows])
    assert features.lengths.max() <= SETTINGS.max_seq_len
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    for i, window in enumerate(windows):
        begin, stop = features.offsets[i], features.offsets[i + 1]
        np.testing.assert_array_equal(features.ids[begin:stop], window.encoding.ids)
        np.testing.assert_array_equal(features.type_ids[begin:stop], window.encoding.type_ids)
        assert features.ids[begin] == cls and features.ids[stop - 1] == sep
        assert 0 <= features.start[i] <= features.end[i] < stop - begin


# --------------------------------------------------------------------------------------------------
# cached_features


def cache_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_cached_features_second_call_reads_the_cache(tokenizer, tmp_path, monkeypatch):
    questions = synthetic_dataset(20, seed=0).questions
    first = cached_features(tokenizer, questions, SETTINGS, tmp_path)
    assert len(cache_files(tmp_path)) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("label_windows ran although the features were cached")

    monkeypatch.setattr(data, "label_windows", must_not_run)
    second = cached_features(make_tiny_tokenizer(), list(questions), SETTINGS, tmp_path)
    assert_same_features(first, second)
    assert_same_features(first, label_windows(tokenizer, questions, SETTINGS))


def test_cached_features_without_a_cache_dir_writes_nothing(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    questions = synthetic_dataset(5, seed=0).questions
    assert_same_features(
        cached_features(tokenizer, questions, SETTINGS, None), label_windows(tokenizer, questions, SETTINGS)
    )
    assert cache_files(tmp_path) == []


def other_tokenizer():
    vocab = {token: i for i, token in enumerate(tiny_vocab() + ["extra"])}
    return BertWordPieceTokenizer(vocab, lowercase=True)._tokenizer


def renamed_answer(questions: list[SquadQuestion]) -> list[SquadQuestion]:
    q = questions[0]
    return [SquadQuestion(q.id, q.question, q.context, q.title, ("in",), (q.context.index("in"),), False)] + questions[
        1:
    ]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t, q, s: (t, q, WindowSettings(64, 8)), id="doc_stride"),
        pytest.param(lambda t, q, s: (t, q, WindowSettings(48, 16)), id="max_seq_len"),
        pytest.param(lambda t, q, s: (t, q, WindowSettings(64, 16, max_question_len=4)), id="max_question_len"),
        pytest.param(lambda t, q, s: (other_tokenizer(), q, s), id="tokenizer"),
        pytest.param(lambda t, q, s: (t, q[:-1], s), id="fewer-questions"),
        pytest.param(lambda t, q, s: (t, synthetic_dataset(20, seed=1).questions, s), id="other-questions"),
        pytest.param(lambda t, q, s: (t, renamed_answer(q), s), id="other-answer"),
    ],
)
def test_cached_features_key_changes_with_settings_tokenizer_and_questions(tokenizer, tmp_path, change):
    questions = synthetic_dataset(20, seed=0).questions
    cached_features(tokenizer, questions, SETTINGS, tmp_path)
    before = cache_files(tmp_path)
    new_tokenizer, new_questions, new_settings = change(tokenizer, questions, SETTINGS)
    features = cached_features(new_tokenizer, new_questions, new_settings, tmp_path)
    after = cache_files(tmp_path)
    assert len(after) == 2 and set(before) < set(after)
    assert_same_features(features, label_windows(new_tokenizer, new_questions, new_settings))


def test_cached_features_file_is_written_atomically(tokenizer, tmp_path, monkeypatch):
    questions = synthetic_dataset(20, seed=0).questions
    cache = tmp_path / "cache"
    real_savez = np.savez

    def crash(file, **arrays):
        real_savez(file, **{k: arrays[k] for k in list(arrays)[:2]})  # half a file, then the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        cached_features(tokenizer, questions, SETTINGS, cache)
    assert cache_files(cache) == []  # neither a half-written cache file nor a temporary one
    monkeypatch.setattr(np, "savez", real_savez)
    features = cached_features(tokenizer, questions, SETTINGS, cache)
    [name] = cache_files(cache)
    assert name.startswith("features-") and name.endswith(".npz")
    assert_same_features(features, cached_features(tokenizer, questions, SETTINGS, cache))
    assert cache_files(cache) == [name]


# --------------------------------------------------------------------------------------------------
# epoch_batches and collate


def realistic_lengths(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 385, size=n)


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Padded positions per real token when every batch is padded to its longest window."""
    padded = sum(len(b) * lengths[b].max() for b in batches)
    real = sum(lengths[b].sum() for b in batches)
    return (padded - real) / real


def test_epoch_batches_hold_every_window_exactly_once_per_epoch():
    lengths = realistic_lengths(1003)
    for epoch in range(3):
        batches = epoch_batches(lengths, 16, seed=7, epoch=epoch)
        assert all(1 <= len(b) <= 16 for b in batches)
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))


def test_epoch_batches_are_length_homogeneous():
    lengths = realistic_lengths(4000)
    bucketed = epoch_batches(lengths, 32, seed=0, epoch=0)
    order = np.random.default_rng(0).permutation(len(lengths))
    shuffled = [order[i : i + 32] for i in range(0, len(order), 32)]
    waste, random_waste = padding_waste(lengths, bucketed), padding_waste(lengths, shuffled)
    assert random_waste > 0.5  # uniform lengths 20..384 in random batches of 32: lots of padding
    assert waste < random_waste / 10, (waste, random_waste)


def test_epoch_batches_are_not_served_in_length_order():
    lengths = realistic_lengths(4000)
    means = [lengths[b].mean() for b in epoch_batches(lengths, 32, seed=0, epoch=0)]
    assert not (np.all(np.diff(means) >= 0) or np.all(np.diff(means) <= 0))
    assert abs(np.corrcoef(np.arange(len(means)), means)[0, 1]) < 0.5


def test_epoch_batches_are_deterministic_for_seed_and_epoch():
    lengths = realistic_lengths(500)

    def key(seed, epoch):
        return [b.tolist() for b in epoch_batches(lengths, 16, seed=seed, epoch=epoch)]

    assert key(3, 1) == key(3, 1)
    assert key(3, 0) != key(3, 1)
    assert key(3, 1) != key(4, 1)


def test_epoch_batches_split_across_ranks_disjoint_and_equal_in_number():
    lengths = realistic_lengths(16 * 41 - 5)  # 41 batches: an odd number
    for epoch in range(2):
        ranks = [epoch_batches(lengths, 16, seed=1, epoch=epoch, rank=r, world_size=2) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == 41 // 2
        seen = [np.concatenate(batches) for batches in ranks]
        assert len(np.intersect1d(seen[0], seen[1])) == 0
        for s in seen:
            assert len(np.unique(s)) == len(s)
        assert len(lengths) - 16 <= len(seen[0]) + len(seen[1]) <= len(lengths)  # at most the odd batch is left


def test_epoch_batches_on_one_rank_of_one_equal_the_default():
    lengths = realistic_lengths(300)
    default = epoch_batches(lengths, 8, seed=2, epoch=3)
    explicit = epoch_batches(lengths, 8, seed=2, epoch=3, rank=0, world_size=1)
    assert [b.tolist() for b in default] == [b.tolist() for b in explicit]


@pytest.fixture(scope="module")
def mixed_features(tokenizer) -> Features:
    questions = synthetic_dataset(6, seed=0, facts=2).questions + synthetic_dataset(6, seed=1, facts=8).questions
    questions.append(question("long", facts_context(30, 9), "lives"))
    return label_windows(tokenizer, questions, SETTINGS)


def test_collate_pads_to_the_longest_window_of_the_batch(mixed_features):
    f = mixed_features
    lengths = f.lengths
    indices = np.array([int(np.argmin(lengths)), int(np.argsort(lengths)[len(lengths) // 2]), 0])
    batch = collate(f, indices, pad_id=0)
    longest = int(lengths[indices].max())
    assert longest < lengths.max()  # dynamic: not padded to the longest window overall
    for tensor in (batch.input_ids, batch.attention_mask, batch.token_type_ids):
        assert tensor.shape == (3, longest) and tensor.dtype == torch.long
    assert len(batch) == 3
    for row, i in enumerate(indices):
        n = int(lengths[i])
        begin = f.offsets[i]
        assert batch.input_ids[row, :n].tolist() == f.ids[begin : begin + n].tolist()
        assert batch.token_type_ids[row, :n].tolist() == f.type_ids[begin : begin + n].tolist()
        assert batch.input_ids[row, n:].eq(0).all() and batch.token_type_ids[row, n:].eq(0).all()
    np.testing.assert_array_equal(batch.start_positions.numpy(), f.start[indices])
    np.testing.assert_array_equal(batch.end_positions.numpy(), f.end[indices])
    assert batch.start_positions.dtype == batch.end_positions.dtype == torch.long


def test_collate_attention_mask_marks_exactly_the_real_tokens(mixed_features):
    f = mixed_features
    indices = np.arange(len(f))
    batch = collate(f, indices, pad_id=3)
    lengths = torch.from_numpy(f.lengths[indices])
    assert batch.attention_mask.sum(dim=1).tolist() == lengths.tolist()
    expected = torch.arange(batch.input_ids.size(1))[None, :] < lengths[:, None]
    assert torch.equal(batch.attention_mask.bool(), expected)
    assert batch.input_ids[~expected].eq(3).all()  # the pad id given is the padding


# --------------------------------------------------------------------------------------------------
# training_data


@pytest.fixture
def recorded_questions(monkeypatch):
    """The questions training_data turns into training windows."""
    seen: list[list[SquadQuestion]] = []
    real = data.cached_features

    def record(tokenizer, questions, settings, cache_dir):
        seen.append(list(questions))
        return real(tokenizer, questions, settings, cache_dir)

    monkeypatch.setattr(data, "cached_features", record)
    return seen


def test_training_data_holds_out_whole_articles(tokenizer, tmp_path, recorded_questions):
    path = multi_article_file(tmp_path / "train.json", articles=4, per_article=5)
    features, held_out = training_data(tokenizer, path, SETTINGS, holdout_articles=1, cache_dir=tmp_path / "c")
    [trained] = recorded_questions
    trained_ids, held_ids = {q.id for q in trained}, {q.id for q in held_out.questions}
    assert held_ids == {f"article3-3-{i}" for i in range(5)}
    assert not trained_ids & held_ids
    assert trained_ids | held_ids == {q.id for q in load_squad(path).questions}
    assert {q.title for q in held_out.questions} == {"article-3"}
    assert [a["title"] for a in held_out.articles] == ["article-3"]
    assert len(features) == 15  # one window per trained question


def test_training_data_holds_out_the_last_articles(tokenizer, tmp_path, recorded_questions):
    path = multi_article_file(tmp_path / "train.json", articles=4, per_article=3)
    _, held_out = training_data(tokenizer, path, SETTINGS, holdout_articles=2)
    assert [a["title"] for a in held_out.articles] == ["article-2", "article-3"]
    assert {q.title for q in recorded_questions[0]} == {"article-0", "article-1"}


def test_training_data_uses_eval_data_instead_of_a_holdout(tokenizer, tmp_path, recorded_questions):
    path = multi_article_file(tmp_path / "train.json", articles=3, per_article=4)
    eval_path = write_squad_file(synthetic_dataset(6, seed=9, prefix="eval"), tmp_path / "eval.json")
    features, held_out = training_data(tokenizer, path, SETTINGS, holdout_articles=1, eval_data=eval_path)
    assert [q.id for q in held_out.questions] == [f"eval9-{i}" for i in range(6)]
    assert len(recorded_questions[0]) == 12 and len(features) == 12  # nothing of `data` is held out


def test_training_data_without_holdout_trains_on_everything(tokenizer, tmp_path, recorded_questions):
    path = multi_article_file(tmp_path / "train.json", articles=2, per_article=4)
    features, held_out = training_data(tokenizer, path, SETTINGS)
    assert held_out is None
    assert len(recorded_questions[0]) == 8 == len(features)


def test_training_data_limit_and_answerable_only(tokenizer, tmp_path, recorded_questions):
    dataset = synthetic_dataset(6, seed=0)
    articles = json.loads(json.dumps(dataset.articles))
    articles[0]["paragraphs"][1]["qas"][0].update(is_impossible=True, answers=[])
    path = tmp_path / "v2.json"
    path.write_text(json.dumps({"version": "v2.0", "data": articles}))
    training_data(tokenizer, path, SETTINGS, answerable_only=True, limit=3)
    assert [q.id for q in recorded_questions[0]] == ["q0-0", "q0-2", "q0-3"]


# --------------------------------------------------------------------------------------------------
# SquadDataset.select and split_articles


def three_articles() -> SquadDataset:
    articles, questions = [], []
    for a in range(3):
        paragraphs = []
        for p in range(2):
            context = f"alice lives in paris . article {a} paragraph {p}"
            qas = [
                {"id": f"{a}.{p}.{k}", "question": "where ?", "answers": [{"text": "paris", "answer_start": 15}]}
                for k in range(2)
            ]
            paragraphs.append({"context": context, "qas": qas})
            questions += [SquadQuestion(qa["id"], "where ?", context, f"t{a}", ("paris",), (15,), False) for qa in qas]
        articles.append({"title": f"t{a}", "paragraphs": paragraphs})
    return SquadDataset("1.1", articles, questions)


def article_ids(dataset: SquadDataset) -> list[str]:
    return [qa["id"] for article in dataset.articles for p in article["paragraphs"] for qa in p["qas"]]


def test_select_trims_articles_to_the_chosen_questions():
    dataset = three_articles()
    before = json.dumps(dataset.articles)
    chosen = dataset.select(["2.1.0", "0.0.1", "0.0.0", "missing"])
    assert [q.id for q in chosen.questions] == ["0.0.0", "0.0.1", "2.1.0"]  # file order
    assert article_ids(chosen) == ["0.0.0", "0.0.1", "2.1.0"]
    assert [a["title"] for a in chosen.articles] == ["t0", "t2"]  # article t1 had none: dropped
    assert [len(a["paragraphs"]) for a in chosen.articles] == [1, 1]  # so were emptied paragraphs
    assert chosen.articles[1]["paragraphs"][0]["context"].endswith("article 2 paragraph 1")
    assert json.dumps(dataset.articles) == before  # the original is untouched


def test_split_articles_holds_out_the_last_articles_whole():
    dataset = three_articles()
    rest, held = dataset.split_articles(1)
    assert [a["title"] for a in rest.articles] == ["t0", "t1"] and [a["title"] for a in held.articles] == ["t2"]
    assert article_ids(rest) == [q.id for q in rest.questions] and article_ids(held) == [q.id for q in held.questions]
    assert sorted(article_ids(rest) + article_ids(held)) == sorted(q.id for q in dataset.questions)
    assert {q.context for q in rest.questions}.isdisjoint(q.context for q in held.questions)


@pytest.mark.parametrize("held_out", [0, -1, 3, 4])
def test_split_articles_refuses_impossible_holdouts(held_out):
    with pytest.raises(ValueError, match="hold out"):
        three_articles().split_articles(held_out)
