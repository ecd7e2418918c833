"""MACs of one forward pass (docs/reference.md): the published totals, length configs, and what really runs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamic_tinybert import cost
from dynamic_tinybert.length_config import LengthConfig, LengthConfigError
from dynamic_tinybert.model import BertConfig

from conftest import tiny_config, tiny_model

BERT_BASE = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINYBERT_6L = BertConfig(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072)
MINILM_6L_384 = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

LAT_CONFIG = LengthConfig.tokens([269, 253, 252, 202, 104, 34])  # LA-MiniLM's published config
RATIO_CONFIG = LengthConfig.ratios([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


# --- the published totals ------------------------------------------------------------------------------------


def test_bert_base_at_384_tokens_costs_35_340_779_904_macs_as_torchprofile_counts():
    assert cost.macs(BERT_BASE, 384) == 35_340_779_904


def test_tinybert_6l_768_at_384_tokens_costs_17_7_gmacs():
    assert cost.macs(TINYBERT_6L, 384) == 17_670_832_512


def test_minilm_6l_384_at_384_tokens_costs_4_76_gmacs():
    assert cost.macs(MINILM_6L_384, 384) == 4_758_552_960


# --- the formula ---------------------------------------------------------------------------------------------


def test_layer_macs_counts_attention_over_the_tokens_in_and_the_feed_forward_over_the_tokens_kept():
    h, i = 768, 3072
    attention = 4 * 300 * h * h + 2 * 300 * 300 * h + 300 * h  # Q, K, V, output; QK^T and AV; LayerNorm
    feed_forward = 2 * 120 * h * i + 120 * h  # two dense layers; LayerNorm
    assert cost.layer_macs(TINYBERT_6L, 300, 120) == attention + feed_forward


def test_dropping_config_costs_less_than_full_length():
    assert cost.macs(TINYBERT_6L, 384, LAT_CONFIG) < cost.macs(TINYBERT_6L, 384)


def test_dropping_config_costs_the_full_cost_minus_what_each_layer_saves():
    n = 384
    kept = [269, 253, 252, 202, 104, 34]
    tokens_in = [n, *kept[:-1]]
    saved = sum(
        cost.layer_macs(TINYBERT_6L, n, n) - cost.layer_macs(TINYBERT_6L, t_in, k)
        for t_in, k in zip(tokens_in, kept, strict=True)
    )
    assert cost.macs(TINYBERT_6L, n, LAT_CONFIG) == cost.macs(TINYBERT_6L, n) - saved


def test_dropping_config_equals_forward_macs_of_its_kept_tokens():
    assert cost.macs(TINYBERT_6L, 384, LAT_CONFIG) == cost.forward_macs(TINYBERT_6L, [269, 253, 252, 202, 104, 34], 384)


def test_ratio_config_keeps_a_fraction_of_the_real_tokens_rounded_up():
    kept = [58, 52, 45, 39, 32, 26]  # ceil(r * 64)
    assert cost.macs(TINYBERT_6L, 64, RATIO_CONFIG) == cost.forward_macs(TINYBERT_6L, kept, 64)


def test_ratio_config_saves_about_the_same_fraction_on_a_short_input_as_on_a_full_one():
    def fraction(tokens: int) -> float:
        return cost.macs(TINYBERT_6L, tokens, RATIO_CONFIG) / cost.macs(TINYBERT_6L, tokens)

    assert fraction(64) < 0.7
    assert fraction(64) == pytest.approx(fraction(384), abs=0.02)


def test_token_count_config_saves_little_on_an_input_shorter_than_its_counts():
    # the LAT form counts out of a padded 384: a 64-token input only drops in the last layer (34 < 64)
    assert cost.macs(TINYBERT_6L, 64, LAT_CONFIG) == cost.forward_macs(TINYBERT_6L, [64, 64, 64, 64, 64, 34], 64)


@pytest.mark.parametrize(
    "config",
    [LengthConfig.ratios([1.0] * 6), LengthConfig.tokens([384] * 6)],
    ids=["full-ratio", "every-token"],
)
def test_config_that_keeps_every_token_costs_the_same_as_no_config(config: LengthConfig):
    assert cost.macs(TINYBERT_6L, 384, config) == cost.macs(TINYBERT_6L, 384)


def test_forward_macs_rejects_a_wrong_number_of_layers():
    with pytest.raises(ValueError, match="5 lengths given for 6 layers"):
        cost.forward_macs(TINYBERT_6L, [384, 300, 200, 100, 50], 384)


def test_macs_rejects_a_config_for_another_number_of_layers():
    with pytest.raises(LengthConfigError, match="has 5 entries; the model has 6 layers"):
        cost.macs(TINYBERT_6L, 384, LengthConfig.ratios([0.9, 0.8, 0.7, 0.6, 0.5]))


# --- what the model really executes ----------------------------------------------------------------------------


def linear_macs(tokens: int, kept_per_layer: list[int]) -> int:
    """MACs of every nn.Linear of one unpadded forward: Q, K, V, output over the tokens a layer receives,
    the feed-forward over the tokens it keeps, the span head over every position."""
    config = tiny_config()
    h, i = config.hidden_size, config.intermediate_size
    total, tokens_in = 0, tokens
    for kept in kept_per_layer:
        total += 4 * tokens_in * h * h + 2 * kept * h * i
        tokens_in = kept
    return total + tokens * h * 2


def executed_linear_macs(length_config: LengthConfig | None, tokens: int) -> int:
    model = tiny_model()
    input_ids = torch.randint(5, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids, length_config=length_config)
    # FlopCounterMode counts 2 FLOPs per MAC; it does not count CPU scaled_dot_product_attention, so only the
    # Linear layers (aten.addmm) are compared
    return counter.get_flop_counts()["Global"][torch.ops.aten.addmm] // 2


def test_model_without_config_executes_the_linear_macs_of_every_token_in_every_layer():
    assert executed_linear_macs(None, 40) == linear_macs(40, [40, 40, 40])


@pytest.mark.parametrize(
    "config",
    [LengthConfig.tokens([30, 20, 10]), LengthConfig.ratios([0.75, 0.5, 0.25])],
    ids=["tokens", "ratios"],
)
def test_model_with_dropping_config_runs_the_feed_forward_only_on_kept_tokens(config: LengthConfig):
    assert executed_linear_macs(config, 40) == linear_macs(40, [30, 20, 10])
