"""Windows over long contexts are the ones the transformers pipeline builds."""

from __future__ import annotations

import pytest

from dynamic_tinybert import checkpoint
from dynamic_tinybert.features import batches, make_windows

transformers = pytest.importorskip("transformers")

QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"
CONTEXT = (
    "Super Bowl 50 was an American football game to determine the champion of the National Football League "
    "(NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the "
    "National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. "
    "The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara."
)


@pytest.fixture(scope="module")
def tokenizers(minilm_qa_dir):
    ours = checkpoint.load_tokenizer(minilm_qa_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_qa_dir)
    return ours, theirs


@pytest.mark.parametrize("max_seq_len,doc_stride", [(384, 128), (48, 8), (40, 20)])
def test_windows_match_the_transformers_tokenizer_with_overflow(tokenizers, max_seq_len: int, doc_stride: int) -> None:
    ours, theirs = tokenizers
    windows = make_windows(ours, [QUESTION], [CONTEXT], max_seq_len=max_seq_len, doc_stride=doc_stride)
    expected = theirs(
        QUESTION,
        CONTEXT,
        truncation="only_second",
        max_length=max_seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert [w.encoding.ids for w in windows] == expected["input_ids"]
    assert [w.encoding.type_ids for w in windows] == expected["token_type_ids"]
    assert [w.encoding.offsets for w in windows] == [list(map(tuple, o)) for o in expected["offset_mapping"]]


def test_every_context_token_lands_in_some_window(tokenizers) -> None:
    ours, _ = tokenizers
    windows = make_windows(ours, [QUESTION], [CONTEXT], max_seq_len=40, doc_stride=10)
    covered = {w.encoding.offsets[i] for w in windows for i in range(w.length) if w.context_mask[i]}
    whole = ours.encode(CONTEXT, add_special_tokens=False).offsets
    assert set(whole) <= covered
    assert all(w.length <= 40 for w in windows)


def test_windows_remember_which_example_they_came_from(tokenizers) -> None:
    ours, _ = tokenizers
    windows = make_windows(ours, [QUESTION, "Who won?"], [CONTEXT, "Denver won."], max_seq_len=48, doc_stride=8)
    examples = [w.example for w in windows]
    assert examples == sorted(examples) and examples[-1] == 1 and examples.count(1) == 1


def test_a_long_question_is_kept_whole_as_the_pipeline_keeps_it_with_a_fast_tokenizer(tokenizers) -> None:
    """The pipeline's max_question_len (64) only cuts with a slow tokenizer: a fast one truncates the context."""
    ours, theirs = tokenizers
    long_question = " ".join(["which", "team", "won"] * 30) + " Super Bowl 50?"
    assert len(ours.encode(long_question, add_special_tokens=False).ids) > 64
    windows = make_windows(ours, [long_question], [CONTEXT * 3])
    expected = theirs(
        long_question,
        CONTEXT * 3,
        truncation="only_second",
        max_length=384,
        stride=128,
        return_overflowing_tokens=True,
    )
    assert [w.encoding.ids for w in windows] == expected["input_ids"]


def test_a_question_so_long_that_no_context_fits_is_a_clear_error(tokenizers) -> None:
    ours, _ = tokenizers
    with pytest.raises(ValueError, match=r"question 0 has 300 tokens, which leaves 81 for the context"):
        make_windows(ours, [" ".join(["why"] * 300)], [CONTEXT])


def test_a_question_longer_than_max_question_len_is_cut(tokenizers) -> None:
    ours, _ = tokenizers
    long_question = " ".join(["why"] * 100) + "?"
    [window] = make_windows(ours, [long_question], ["Because."], max_question_len=10)
    assert window.encoding.sequence_ids.count(0) == 10


def test_a_stride_that_leaves_no_room_for_context_is_a_clear_error(tokenizers) -> None:
    ours, _ = tokenizers
    with pytest.raises(ValueError, match=r"question 0 has \d+ tokens.*doc_stride \(40\)"):
        make_windows(ours, [QUESTION], [CONTEXT], max_seq_len=48, doc_stride=40)


def test_batches_group_windows_of_similar_length_and_pad_the_rest(tokenizers) -> None:
    ours, _ = tokenizers
    contexts = ["Denver won.", CONTEXT, "Carolina lost the game.", CONTEXT[:200]]
    windows = make_windows(ours, ["Who won?"] * 4, contexts)
    produced = list(batches(windows, batch_size=2))
    assert sorted(len(b.windows) for b in produced) == [2, 2]
    for batch in produced:
        lengths = [w.length for w in batch.windows]
        assert batch.input_ids.shape[1] == max(lengths)
        assert batch.attention_mask.sum(dim=1).tolist() == lengths
    first, second = ([w.length for w in b.windows] for b in produced)
    assert min(first) >= max(second)  # longest first: later batches fit in the memory the first one freed
