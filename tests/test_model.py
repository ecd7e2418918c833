"""The BERT QA model: parity with transformers at full length, and Drop-and-Restore when a length config drops."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from dynamic_tinybert import checkpoint
from dynamic_tinybert import model as model_module
from dynamic_tinybert.length_config import LengthConfig, LengthConfigError
from dynamic_tinybert.model import (
    BertConfig,
    BertForQuestionAnswering,
    BertSelfAttention,
    attention_significance,
    restore,
    select_tokens,
    token_ranks,
)

from conftest import tiny_model

CLS, SEP = 2, 3  # ids in the tiny vocabulary of conftest.tiny_vocab()
SHARP = dict(initializer_range=0.2)  # peaked attention: no near-ties in significance between runs


def make_batch(lengths, question_lengths, vocab_size, seed=0, total=None):
    """Padded inputs: [CLS] question [SEP] context [SEP], token type 0 for the question part, 1 for the context.

    question_lengths[b] counts the question tokens between [CLS] and the first [SEP].
    """
    generator = torch.Generator().manual_seed(seed)
    T = total or max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for b, (n, q) in enumerate(zip(lengths, question_lengths, strict=True)):
        ids[b, :n] = torch.randint(5, vocab_size, (n,), generator=generator)
        ids[b, 0], ids[b, q + 1], ids[b, n - 1] = CLS, SEP, SEP
        mask[b, :n] = 1
        types[b, q + 2 : n] = 1
    return ids, mask, types


def hf_model_like(model: BertForQuestionAnswering) -> transformers.BertForQuestionAnswering:
    reference = transformers.BertForQuestionAnswering(transformers.BertConfig(**model.config.to_dict())).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference


def max_diff_at_real_positions(ours, theirs, mask) -> float:
    real = mask.bool()
    return max(
        (ours.start_logits - theirs.start_logits)[real].abs().max().item(),
        (ours.end_logits - theirs.end_logits)[real].abs().max().item(),
    )


def encoder_output(model, ids, mask, types, config):
    """The encoder's hidden states (B, T, H) under a length config, as forward() computes them."""
    mask = mask.bool()
    rank = token_ranks(mask, types, protect_question=config.protect_question)
    keep_counts = config.keep_counts(mask.sum(dim=1))
    with torch.no_grad():
        hidden, _ = model.bert.encoder(model.bert.embeddings(ids, types), mask, keep_counts, rank)
    return hidden


def hand_made_probs(received: torch.Tensor, mask: torch.Tensor, num_heads: int = 2) -> torch.Tensor:
    """Attention probabilities (B, nh, T, T) in which every query attends to key k in proportion to received[b, k]."""
    weights = received * mask
    row = weights / weights.sum(dim=1, keepdim=True)  # (B, T)
    B, T = mask.shape
    return row[:, None, None, :].expand(B, num_heads, T, T).clone()


@pytest.fixture
def recorded_need_scores(monkeypatch):
    """Every need_scores flag BertSelfAttention.forward is called with, in order."""
    calls: list[bool] = []
    original = BertSelfAttention.forward

    def recording(self, x, mask, need_scores):
        calls.append(need_scores)
        return original(self, x, mask, need_scores)

    monkeypatch.setattr(BertSelfAttention, "forward", recording)
    return calls


@pytest.fixture
def recorded_selections(monkeypatch):
    """The (index, new_mask) of every select_tokens call the encoder makes, in order."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = model_module.select_tokens

    def recording(probs, mask, rank, keep):
        result = original(probs, mask, rank, keep)
        calls.append(result)
        return result

    monkeypatch.setattr(model_module, "select_tokens", recording)
    return calls


# --- full length equals transformers ------------------------------------------------------------------------

SHAPES = [
    dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37, hidden_act="gelu"),
    dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=8, intermediate_size=128, hidden_act="gelu_new"),
    dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=96, hidden_act="gelu"),
    dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=48, hidden_act="gelu_new"),
]


def full_length_configs(num_layers: int, total: int) -> dict[str, LengthConfig | None]:
    return {
        "none": None,
        "ratios-1.0": LengthConfig.ratios([1.0] * num_layers),
        "tokens>=length": LengthConfig.tokens([total] * num_layers),
    }


@pytest.mark.parametrize("which", ["none", "ratios-1.0", "tokens>=length"])
@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"L{s['num_hidden_layers']}-H{s['hidden_size']}-A{s['num_attention_heads']}"
)
def test_full_length_logits_equal_transformers(shape, which):
    model = tiny_model(seed=1, **shape, **SHARP)
    reference = hf_model_like(model)
    ids, mask, types = make_batch([12, 7, 3, 10], [4, 2, 1, 3], model.config.vocab_size, seed=2)
    config = full_length_configs(shape["num_hidden_layers"], total=12)[which]

    with torch.no_grad():
        ours = model(ids, mask, types, length_config=config)
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)

    assert ours.start_logits.shape == ours.end_logits.shape == (4, 12)
    assert max_diff_at_real_positions(ours, theirs, mask) <= 1e-4


def test_full_length_defaults_mask_and_token_types_like_transformers():
    model = tiny_model(seed=3, **SHARP)
    reference = hf_model_like(model)
    ids, mask, _ = make_batch([9, 9], [3, 4], model.config.vocab_size, seed=4)

    with torch.no_grad():
        ours = model(ids)
        theirs = reference(input_ids=ids)

    assert max_diff_at_real_positions(ours, theirs, mask) <= 1e-4


@pytest.fixture(scope="module")
def minilm_pair(minilm_qa_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = checkpoint.load_model(minilm_qa_dir)
        theirs = transformers.BertForQuestionAnswering.from_pretrained(minilm_qa_dir).eval()
    return ours, theirs, checkpoint.load_tokenizer(minilm_qa_dir)


QA_PAIRS = [
    ("Who won Super Bowl 50?", "The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50."),
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    (
        "When was the university founded?",
        "The University of Notre Dame was founded in 1842 by Edward Sorin, a priest of the Congregation of Holy "
        "Cross, on land in northern Indiana that had been a mission to the Potawatomi.",
    ),
]


@pytest.mark.slow
def test_minilm_logits_equal_transformers_on_real_questions(minilm_pair):
    ours, theirs, tokenizer = minilm_pair
    encodings = [tokenizer.encode(question, context) for question, context in QA_PAIRS]
    T = max(len(e.ids) for e in encodings)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in encodings])
    mask = torch.tensor([e.attention_mask + [0] * (T - len(e.ids)) for e in encodings])
    types = torch.tensor([e.type_ids + [0] * (T - len(e.ids)) for e in encodings])
    assert len({len(e.ids) for e in encodings}) == 3 and (types == 1).any()  # padded, with a context segment

    with torch.no_grad():
        batched = ours(ids, mask, types)
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
        alone = [
            ours(ids[b : b + 1, : len(e.ids)], None, types[b : b + 1, : len(e.ids)]) for b, e in enumerate(encodings)
        ]

    assert max_diff_at_real_positions(batched, expected, mask) <= 1e-4
    for b, e in enumerate(encodings):
        n = len(e.ids)
        assert (alone[b].start_logits[0] - expected.start_logits[b, :n]).abs().max() <= 1e-4
        assert (alone[b].end_logits[0] - expected.end_logits[b, :n]).abs().max() <= 1e-4


# --- Drop-and-Restore in the model ------------------------------------------------------------------------


def test_dropping_config_keeps_logit_shape_and_changes_logits():
    model = tiny_model(seed=0, **SHARP)
    ids, mask, types = make_batch([14, 9, 5], [4, 3, 1], model.config.vocab_size, seed=1)

    with torch.no_grad():
        full = model(ids, mask, types)
        dropped = model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 0.5, 0.25]))

    assert dropped.start_logits.shape == dropped.end_logits.shape == (3, 14)
    assert torch.isfinite(dropped.start_logits).all() and torch.isfinite(dropped.end_logits).all()
    assert (dropped.start_logits - full.start_logits)[mask.bool()].abs().max() > 1e-3


def test_cls_is_kept_by_a_config_keeping_one_token_per_layer(recorded_selections):
    model = tiny_model(seed=0, **SHARP)
    ids, mask, types = make_batch([10, 6], [3, 2], model.config.vocab_size, seed=1)

    with torch.no_grad():
        model(ids, mask, types, length_config=LengthConfig.tokens([1, 1, 1]))

    index, new_mask = recorded_selections[0]  # layer 0 drops to 1; later layers have nothing left to drop
    assert len(recorded_selections) == 1
    assert index.tolist() == [[0], [0]]
    assert new_mask.tolist() == [[True], [True]]


def test_model_rejects_config_with_wrong_number_of_layers():
    model = tiny_model(seed=0)
    ids, mask, types = make_batch([6], [2], model.config.vocab_size)

    with pytest.raises(LengthConfigError, match="the model has 3 layers"):
        model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 0.5]))


def layer_by_layer(model, ids, types, keep):
    """Drop-and-Restore of one unpadded input computed by hand from the modules, with each layer's kept tokens.

    Returns the hidden states (T, H) every position ends with, and the original positions each layer kept.
    """
    x = model.bert.embeddings(ids, types)[0]  # (T, H)
    T = x.size(0)
    final = torch.empty_like(x)
    positions = torch.arange(T)
    kept_per_layer = []
    rank = token_ranks(torch.ones(1, T, dtype=torch.bool), types, protect_question=False)[0]
    for layer, k in zip(model.bert.encoder.layer, keep, strict=True):
        n = positions.numel()
        attended, scores = layer.attention(x[None], torch.ones(1, n, dtype=torch.bool), need_scores=True)
        if k < n:
            if layer.token_scorer is None:  # the attention each token receives, over heads and queries
                significance = scores.softmax(dim=-1)[0].sum(dim=(0, 1))
            else:
                significance = layer.token_scorer(attended)[0, :, 0]
            order = sorted(range(n), key=lambda t: (-int(rank[t]), -float(significance[t])))
            index = torch.tensor(sorted(order[:k]))
            dropped = torch.ones(n, dtype=torch.bool)
            dropped[index] = False
            final[positions[dropped]] = x[dropped]  # the state they had before this layer
            attended, positions, rank = attended[:, index], positions[index], rank[index]
        kept_per_layer.append(positions)
        x = layer.feed_forward(attended)[0]
    final[positions] = x
    return final, kept_per_layer


def test_dropped_tokens_keep_the_output_of_the_last_layer_they_completed():
    model = tiny_model(seed=0, **SHARP)
    ids, mask, types = make_batch([12], [3], model.config.vocab_size, seed=5)
    config = LengthConfig.tokens([12, 7, 3])  # layer 0 keeps all, layer 1 drops 5, layer 2 drops 4 more

    hidden = encoder_output(model, ids, mask, types, config)[0]
    with torch.no_grad():
        layer0 = model.bert.encoder.layer[0]
        after_layer0 = layer0.feed_forward(layer0.attention(model.bert.embeddings(ids, types), mask.bool(), False)[0])
        expected, (kept0, kept1, kept2) = layer_by_layer(model, ids, types, [12, 7, 3])

    dropped_at_1 = sorted(set(kept0.tolist()) - set(kept1.tolist()))
    dropped_at_2 = sorted(set(kept1.tolist()) - set(kept2.tolist()))
    assert len(dropped_at_1) == 5 and len(dropped_at_2) == 4
    torch.testing.assert_close(hidden[dropped_at_1], after_layer0[0, dropped_at_1], atol=1e-6, rtol=0)
    torch.testing.assert_close(hidden[dropped_at_2], expected[dropped_at_2], atol=1e-5, rtol=0)


def test_kept_tokens_are_computed_by_later_layers_over_kept_tokens_only():
    model = tiny_model(seed=0, **SHARP)
    ids, mask, types = make_batch([12], [3], model.config.vocab_size, seed=5)

    hidden = encoder_output(model, ids, mask, types, LengthConfig.tokens([12, 7, 3]))[0]
    with torch.no_grad():
        expected, kept = layer_by_layer(model, ids, types, [12, 7, 3])
        layer0 = model.bert.encoder.layer[0]
        after_layer0 = layer0.feed_forward(layer0.attention(model.bert.embeddings(ids, types), mask.bool(), False)[0])

    survivors = kept[-1]
    assert survivors[0] == 0  # [CLS]
    torch.testing.assert_close(hidden[survivors], expected[survivors], atol=1e-5, rtol=0)
    assert ((hidden[survivors] - after_layer0[0, survivors]).abs().amax(dim=-1) > 1e-2).all()


def test_learned_selection_keeps_the_tokens_its_scorers_rank_highest(recorded_need_scores):
    model = tiny_model(seed=0, token_selection="learned", **SHARP)
    ids, mask, types = make_batch([12], [3], model.config.vocab_size, seed=5)

    hidden = encoder_output(model, ids, mask, types, LengthConfig.tokens([12, 7, 3]))[0]
    assert recorded_need_scores == [False, False, False]  # no layer materialises attention scores
    with torch.no_grad():
        expected, kept = layer_by_layer(model, ids, types, [12, 7, 3])
        attention_model = tiny_model(seed=0, **SHARP)
        attention_model.load_state_dict(model.state_dict(), strict=False)
        _, kept_by_attention = layer_by_layer(attention_model, ids, types, [12, 7, 3])

    survivors = kept[-1]
    torch.testing.assert_close(hidden[survivors], expected[survivors], atol=1e-5, rtol=0)
    assert kept[-1].tolist() != kept_by_attention[-1].tolist()  # the scorers, not the attention, chose


def test_learned_selection_changes_nothing_at_full_length():
    model = tiny_model(seed=0, token_selection="learned")
    attention_model = tiny_model(seed=0)
    missing = attention_model.load_state_dict(model.state_dict(), strict=False)
    assert sorted(missing.unexpected_keys) == [
        f"bert.encoder.layer.{i}.token_scorer.{p}" for i in range(3) for p in ("bias", "weight")
    ]
    ids, mask, types = make_batch([10, 7], [3, 2], model.config.vocab_size)
    with torch.no_grad():
        ours, theirs = model(ids, mask, types), attention_model(ids, mask, types)
    torch.testing.assert_close(ours.start_logits, theirs.start_logits, atol=0, rtol=0)


def test_restore_writes_hidden_states_back_to_original_positions_and_spare_slots_to_the_last_row():
    buffer = torch.zeros(2, 5, 1)  # T = 4, plus the spare row
    hidden = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])
    positions = torch.tensor([[3, 1], [2, 4]])  # row 1's second slot carries no token

    restored = restore(buffer, hidden, positions)

    assert restored[..., 0].tolist() == [[0.0, 2.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 0.0, 4.0]]
    assert buffer.abs().sum() == 0  # out of place


def test_the_trace_ends_with_the_tokens_that_leave_the_last_layer_fresh():
    model = tiny_model()
    ids, mask, types = make_batch([20, 13], [4, 3], model.config.vocab_size)
    with torch.no_grad():
        out = model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 0.5, 0.25]), trace=True)
    trace = out.trace
    assert len(trace.positions) == len(trace.masks) == len(trace.hidden_states) == 4
    assert trace.masks[-1].sum(dim=1).tolist() == [5, 4]  # ceil(0.25 * 20), ceil(0.25 * 13)
    # those positions, and only those, are fresh: their span logits come from the last layer's output
    with torch.no_grad():
        last_layer_logits = model.qa_outputs(trace.hidden_states[-1])[..., 0]
    kept, positions = trace.masks[-1], trace.positions[-1].clamp(max=ids.size(1) - 1)  # empty slots point past the end
    torch.testing.assert_close(out.start_logits.gather(1, positions)[kept], last_layer_logits[kept])
    assert out.fresh.sum(dim=1).tolist() == [5, 4]
    assert out.fresh.gather(1, positions)[kept].all()
    assert set(trace.positions[-1][0][kept[0]].tolist()) < set(trace.positions[-2][0][trace.masks[-2][0]].tolist())


def test_kept_positions_are_each_layers_real_kept_tokens_nested_and_the_fresh_ones_last():
    model = tiny_model()
    ids, mask, types = make_batch([20, 13], [4, 3], model.config.vocab_size)
    config = LengthConfig.ratios([1.0, 0.5, 0.25])
    with torch.no_grad():
        out = model(ids, mask, types, length_config=config, trace=True)
    for row, length in enumerate([20, 13]):
        kept = out.trace.kept_positions(row)
        assert [len(layer) for layer in kept] == config.keep_counts(torch.tensor([length]))[0].tolist()
        assert kept[0] == list(range(length))  # a layer keeping every token keeps them all, padding none
        assert all(set(later) <= set(earlier) for earlier, later in zip(kept, kept[1:]))
        assert all(layer[0] == 0 for layer in kept)  # [CLS] survives every layer
        assert kept[-1] == out.fresh[row].nonzero().flatten().tolist()


def test_every_position_is_fresh_when_no_layer_drops_a_token():
    model = tiny_model()
    ids, mask, types = make_batch([20, 13], [4, 3], model.config.vocab_size)
    with torch.no_grad():
        assert model(ids, mask, types).fresh is None
        assert model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 1.0, 1.0])).fresh is None


BATCH_CONFIGS = [
    LengthConfig.ratios([1.0, 0.7, 0.5, 0.3]),
    LengthConfig.ratios([0.8, 0.8, 0.4, 0.2], protect_question=True),
    LengthConfig.tokens([12, 8, 5, 3]),
    LengthConfig.tokens([20, 9, 9, 2], protect_question=True),
]


@pytest.mark.parametrize("config", BATCH_CONFIGS, ids=str)
def test_padded_batch_gives_the_same_logits_as_each_input_alone(config):
    model = tiny_model(seed=0, num_hidden_layers=4, **SHARP)
    lengths, question_lengths = [5, 16, 9, 12], [1, 4, 3, 2]
    ids, mask, types = make_batch(lengths, question_lengths, model.config.vocab_size, seed=3)

    with torch.no_grad():
        batched = model(ids, mask, types, length_config=config)
        for b, n in enumerate(lengths):
            alone = model(ids[b : b + 1, :n], None, types[b : b + 1, :n], length_config=config)
            torch.testing.assert_close(batched.start_logits[b, :n], alone.start_logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.end_logits[b, :n], alone.end_logits[0], atol=1e-5, rtol=0)


def test_protect_question_keeps_every_question_token_that_fits_in_half_of_the_kept_tokens(recorded_selections):
    model = tiny_model(seed=0, **SHARP)
    ids, mask, types = make_batch([16, 13], [4, 2], model.config.vocab_size, seed=6)
    segment_a = [list(range(0, 6)), list(range(0, 4))]  # [CLS] + question + [SEP]: token type 0

    with torch.no_grad():
        model(ids, mask, types, length_config=LengthConfig.tokens([10, 10, 10]))
        model(ids, mask, types, length_config=LengthConfig.tokens([10, 10, 10], protect_question=True))

    (unprotected, _), (protected, protected_mask) = recorded_selections
    assert any(not set(segment_a[b]) <= set(unprotected[b].tolist()) for b in range(2))  # would be dropped
    for b in range(2):
        assert set(segment_a[b]) <= set(protected[b][protected_mask[b]].tolist())


# --- select_tokens ------------------------------------------------------------------------------------------


def test_select_tokens_keeps_the_most_attended_tokens_in_original_order():
    received = torch.tensor([[5.0, 1.0, 8.0, 3.0, 9.0, 2.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    rank = token_ranks(mask, torch.zeros(1, 6, dtype=torch.long), protect_question=False)

    index, new_mask = select_tokens(
        attention_significance(hand_made_probs(received, mask), mask), mask, rank, torch.tensor([4])
    )

    assert index.tolist() == [[0, 2, 3, 4]]  # [CLS] plus the top 3 of the rest, in order
    assert new_mask.tolist() == [[True] * 4]


def test_select_tokens_always_keeps_cls_even_when_least_attended():
    received = torch.tensor([[0.1, 4.0, 7.0, 6.0, 5.0], [0.01, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.ones(2, 5, dtype=torch.bool)
    rank = token_ranks(mask, torch.zeros(2, 5, dtype=torch.long), protect_question=False)

    for k in (1, 2, 3):
        index, _ = select_tokens(
            attention_significance(hand_made_probs(received, mask), mask), mask, rank, torch.tensor([k, k])
        )
        assert (index[:, 0] == 0).all(), k
    index, _ = select_tokens(
        attention_significance(hand_made_probs(received, mask), mask), mask, rank, torch.tensor([3, 3])
    )
    assert index[0].tolist() == [0, 2, 3]


def test_select_tokens_never_keeps_padding_while_dropping_a_real_token():
    mask = torch.tensor([[True] * 4 + [False] * 4])
    received = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]])
    probs = hand_made_probs(received, mask)
    probs[..., 4:] = 100.0  # padded keys look most attended-to
    rank = token_ranks(mask, torch.zeros_like(mask, dtype=torch.long), protect_question=False)

    index, new_mask = select_tokens(attention_significance(probs, mask), mask, rank, torch.tensor([3]))

    assert index.tolist() == [[0, 2, 3]]
    assert new_mask.all()


def test_select_tokens_ignores_attention_from_padded_queries():
    mask = torch.tensor([[True] * 5 + [False] * 3])
    received = torch.tensor([[1.0, 5.0, 1.0, 4.0, 3.0, 0.0, 0.0, 0.0]])
    probs = hand_made_probs(received, mask)
    probs[:, :, 5:, :] = 0.0
    probs[:, :, 5:, 2] = 1.0  # padded query rows put all their attention on token 2
    rank = token_ranks(mask, torch.zeros_like(mask, dtype=torch.long), protect_question=False)

    index, _ = select_tokens(attention_significance(probs, mask), mask, rank, torch.tensor([3]))

    assert index.tolist() == [[0, 1, 3]]


def test_select_tokens_masks_exactly_keep_slots_per_row():
    lengths = torch.tensor([9, 6, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    generator = torch.Generator().manual_seed(0)
    received = torch.rand(3, 9, generator=generator) + 0.1
    rank = token_ranks(mask, torch.zeros(3, 9, dtype=torch.long), protect_question=False)
    keep = torch.tensor([5, 2, 3])

    index, new_mask = select_tokens(attention_significance(hand_made_probs(received, mask), mask), mask, rank, keep)

    assert index.shape == new_mask.shape == (3, 5)
    assert new_mask.sum(dim=1).tolist() == keep.tolist()
    assert new_mask.tolist() == [[True] * 5, [True] * 2 + [False] * 3, [True] * 3 + [False] * 2]
    for b in range(3):
        chosen = index[b][new_mask[b]]
        assert chosen.tolist() == sorted(chosen.tolist())  # original order
        assert mask[b, chosen].all()  # real tokens only
    assert index[2][new_mask[2]].tolist() == [0, 1, 2]  # keeps all of a row's real tokens


def test_select_tokens_kept_set_matches_top_k_of_summed_attention():
    generator = torch.Generator().manual_seed(1)
    B, H, T = 3, 4, 10
    mask = torch.arange(T)[None, :] < torch.tensor([[10], [8], [6]])
    scores = torch.randn(B, H, T, T, generator=generator) * 3
    probs = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(dim=-1)
    rank = token_ranks(mask, torch.zeros(B, T, dtype=torch.long), protect_question=False)
    keep = torch.tensor([6, 4, 2])

    index, new_mask = select_tokens(attention_significance(probs, mask), mask, rank, keep)

    significance = (probs * mask[:, None, :, None]).sum(dim=(1, 2))  # over heads and real queries
    for b in range(B):
        others = significance[b, 1 : int(mask[b].sum())]
        top = (others.topk(int(keep[b]) - 1).indices + 1).tolist()
        assert index[b][new_mask[b]].tolist() == sorted([0, *top])


def test_select_tokens_keeps_protected_question_tokens_before_context_in_half_of_the_kept_slots():
    mask = torch.ones(1, 9, dtype=torch.bool)
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1]])  # [CLS] q q q [SEP] context...
    received = torch.tensor([[1.0, 0.1, 0.2, 0.3, 0.4, 9.0, 8.0, 7.0, 6.0]])  # context most attended
    significance = attention_significance(hand_made_probs(received, mask), mask)
    protected = token_ranks(mask, types, protect_question=True)
    unprotected = token_ranks(mask, types, protect_question=False)

    def kept(rank, keep):
        return select_tokens(significance, mask, rank, torch.tensor([keep]))[0].tolist()

    assert kept(protected, 8) == [[0, 1, 2, 3, 4, 5, 6, 7]]  # all four question tokens fit in half of 8
    # 5 slots: the two most significant question tokens are protected; the rest compete with the context
    assert kept(protected, 5) == [[0, 3, 4, 5, 6]]
    assert kept(protected, 2) == [[0, 4]]
    assert kept(unprotected, 5) == [[0, 5, 6, 7, 8]]


def test_select_tokens_protects_question_tokens_of_each_input_by_its_own_keep_count():
    mask = torch.ones(2, 7, dtype=torch.bool)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]] * 2)  # [CLS] q q [SEP] context...
    received = torch.tensor([[1.0, 0.1, 0.3, 0.2, 9.0, 8.0, 7.0]] * 2)
    significance = attention_significance(hand_made_probs(received, mask), mask)
    rank = token_ranks(mask, types, protect_question=True)

    index, new_mask = select_tokens(significance, mask, rank, torch.tensor([6, 3]))
    assert index[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert index[1][new_mask[1]].tolist() == [0, 2, 4]


def test_token_ranks_put_cls_first_then_protected_question_then_context_then_padding():
    mask = torch.tensor([[True] * 5 + [False] * 2])
    types = torch.tensor([[0, 0, 0, 1, 1, 0, 0]])

    assert token_ranks(mask, types, protect_question=True).tolist() == [[2, 1, 1, 0, 0, -1, -1]]
    assert token_ranks(mask, types, protect_question=False).tolist() == [[2, 0, 0, 0, 0, -1, -1]]


# --- attention paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_fused_attention_equals_the_scores_path(padded):
    torch.manual_seed(0)
    attention = BertSelfAttention(BertConfig(hidden_size=32, num_attention_heads=4)).eval()
    for linear in (attention.query, attention.key, attention.value):
        torch.nn.init.normal_(linear.weight, std=0.3)
    x = torch.randn(3, 7, 32)
    lengths = torch.tensor([7, 4, 2]) if padded else torch.tensor([7, 7, 7])
    mask = torch.arange(7)[None, :] < lengths[:, None]

    with torch.no_grad():
        fused, no_scores = attention(x, mask, need_scores=False)
        explicit, scores = attention(x, mask, need_scores=True)

    assert no_scores is None
    assert scores.shape == (3, 4, 7, 7)
    probs = scores.softmax(dim=-1)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3, 4, 7))
    assert (probs * ~mask[:, None, None, :]).abs().max() == 0  # no attention on padding


def test_no_layer_computes_probabilities_when_nothing_is_dropped(recorded_need_scores):
    model = tiny_model(seed=0)
    ids, mask, types = make_batch([10, 6, 3], [3, 2, 1], model.config.vocab_size)

    with torch.no_grad():
        model(ids, mask, types, length_config=LengthConfig.tokens([10, 10, 10]))
        model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 1.0, 1.0]))
        model(ids, mask, types)

    assert recorded_need_scores == [False] * 9


def test_only_dropping_layers_compute_probabilities(recorded_need_scores):
    model = tiny_model(seed=0)
    ids, mask, types = make_batch([10, 6, 3], [3, 2, 1], model.config.vocab_size)

    with torch.no_grad():
        model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 0.5, 0.5]))

    assert recorded_need_scores == [False, True, False]


def test_a_layer_drops_when_any_input_of_the_batch_drops(recorded_need_scores):
    model = tiny_model(seed=0)
    ids, mask, types = make_batch([10, 6], [3, 2], model.config.vocab_size)

    with torch.no_grad():
        model(ids, mask, types, length_config=LengthConfig.tokens([8, 8, 8]))  # only the 10-token input drops

    assert recorded_need_scores == [True, False, False]


# --- training -----------------------------------------------------------------------------------------------


def test_backward_through_a_dropping_config_gives_finite_grads_to_every_encoder_parameter():
    model = tiny_model(seed=0).train()
    ids, mask, types = make_batch([12, 8, 5], [3, 2, 1], model.config.vocab_size)
    starts, ends = torch.tensor([6, 4, 3]), torch.tensor([8, 5, 3])

    logits = model(ids, mask, types, length_config=LengthConfig.ratios([1.0, 0.6, 0.3]))
    loss = torch.nn.functional.cross_entropy(logits.start_logits, starts) + torch.nn.functional.cross_entropy(
        logits.end_logits, ends
    )
    loss.backward()

    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        if name.startswith(("bert.encoder.", "qa_outputs.")):
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
    for i, layer in enumerate(model.bert.encoder.layer):
        assert layer.output.dense.weight.grad.abs().sum() > 0, f"layer {i} FFN got no gradient"
        assert layer.attention.self.query.weight.grad.abs().sum() > 0, f"layer {i} attention got no gradient"


# --- config ------------------------------------------------------------------------------------------------


def test_config_from_dict_reads_a_transformers_config_and_ignores_unknown_keys():
    data = {**BertConfig(hidden_size=64, num_attention_heads=4).to_dict(), "use_cache": True, "_name_or_path": "x"}

    config = BertConfig.from_dict(data)

    assert config == BertConfig(hidden_size=64, num_attention_heads=4)


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(model_type="roberta"), "model_type"),
        (dict(position_embedding_type="relative_key"), "position_embedding_type"),
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_act="swiglu"), "hidden_act"),
    ],
    ids=["model_type", "relative-positions", "hidden-not-divisible", "activation"],
)
def test_config_from_dict_rejects_unsupported_checkpoints_naming_the_field(override, field):
    data = {**BertConfig().to_dict(), **override}

    with pytest.raises(ValueError, match=field) as error:
        BertConfig.from_dict(data)
    assert str(next(iter(override.values()))) in str(error.value)
