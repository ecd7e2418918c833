"""Multiply-accumulates (MACs) of one forward pass, counted the way torchprofile counts them.

torchprofile, which LAT and Intel used (their "GFLOPs"), counts the matmuls, one MAC per element of each
LayerNorm's output and one per element of the attention-mask multiply; adds, softmax and GELU are free.
That gives BERT-base at 384 tokens 35,340,779,904 MACs. Significance scores and the restore scatter are
bookkeeping and are not counted (a learned token scorer is hidden_size MACs per token: about 0.02% of a
layer's).

In a layer that drops tokens, attention runs over the tokens the layer receives and the feed-forward
sub-layer over the tokens it keeps; the span head runs over every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .length_config import LengthConfig, is_full_length
from .model import BertConfig


def layer_macs(config: BertConfig, tokens_in: int, tokens_kept: int) -> int:
    """One encoder layer that receives `tokens_in` tokens and passes `tokens_kept` to its feed-forward."""
    h, i = config.hidden_size, config.intermediate_size
    attention = 4 * tokens_in * h * h + 2 * tokens_in * tokens_in * h + tokens_in * h  # QKV+out, QK^T, AV, LN
    feed_forward = 2 * tokens_kept * h * i + tokens_kept * h  # two dense layers, LN
    return attention + feed_forward


def forward_macs(config: BertConfig, kept_per_layer: Sequence[int], tokens: int) -> int:
    """MACs of one input of `tokens` tokens whose layers keep `kept_per_layer` tokens each."""
    if len(kept_per_layer) != config.num_hidden_layers:
        raise ValueError(f"{len(kept_per_layer)} lengths given for {config.num_hidden_layers} layers")
    h = config.hidden_size
    total = tokens * h + tokens  # embedding LayerNorm, attention-mask multiply
    tokens_in = tokens
    for kept in kept_per_layer:
        total += layer_macs(config, tokens_in, kept)
        tokens_in = kept
    return total + tokens * h * 2  # span head over every restored position


def macs(config: BertConfig, tokens: int, length_config: LengthConfig | None = None) -> int:
    """MACs of one input with `tokens` real tokens (no padding) under a length configuration."""
    if is_full_length(length_config):
        return forward_macs(config, [tokens] * config.num_hidden_layers, tokens)
    length_config.check_fits(config.num_hidden_layers, config.max_position_embeddings)
    kept = length_config.keep_counts(torch.tensor([tokens]))[0].tolist()
    return forward_macs(config, kept, tokens)
