"""The length-adaptive model as one ONNX graph whose per-layer keep counts are inputs, for ONNX Runtime.

One exported graph serves every length configuration and budget: the counts a `LengthConfig` gives a window
are fed with its tokens (`window_feed`), and the graph selects, gathers and restores tokens itself. It takes
one unpadded window at a time, so it needs no attention mask, and every layer selects (keeping all its tokens
where the count says so). The selection is the eager encoder's (`model.select_tokens`, the tests hold the two
equal), written for one window: the batched form's sorts, scatters and padding would add about a hundred
small operators to every layer.

The export is made in memory when a model is loaded and never read from a file: weights only ever come from
the checkpoint. int8 is ONNX Runtime's dynamic quantisation of the export (int8 weights per output channel,
activations quantised as each call runs).
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .length_config import LengthConfig, is_full_length
from .model import RANK_QUESTION, BertAttention, BertForQuestionAnswering, token_ranks

INPUTS = ("input_ids", "token_type_ids", "keep", "keep_question")
OPSET = 17


class FusedAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(head size)) v over `num_heads` heads, (1, T, H) each; exported as ONNX Runtime's
    MultiHeadAttention, one CPU kernel in place of a dozen reshapes, transposes and matmuls per layer."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
        B, T, H = q.shape
        heads = [x.view(B, T, num_heads, H // num_heads).transpose(1, 2) for x in (q, k, v)]
        return F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(B, T, H)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads)
        out.setType(q.type().with_sizes([None, None, None]))  # its length differs layer to layer
        return out


def attend(attention: BertAttention, x: torch.Tensor) -> torch.Tensor:
    """`BertAttention` over one unpadded window, its core fused (`FusedAttention`)."""
    s = attention.self
    return attention.output(FusedAttention.apply(s.query(x), s.key(x), s.value(x), s.num_heads), x)


def select_in_window(
    significance: torch.Tensor,
    question: torch.Tensor,
    first: torch.Tensor,
    keep: torch.Tensor,
    keep_question: torch.Tensor,
) -> torch.Tensor:
    """The tokens a layer keeps of one unpadded window, as indices (K,) in their original order: the choice
    `model.select_tokens` makes for it, in a handful of operators instead of its batched sorts and scatters.

    significance (T,), finite; question (T,) the question tokens ([CLS] not among them); first (T,) [CLS];
    keep () tokens to keep, keep_question () how many of the most significant question tokens are protected
    (`keep // 2`, or 0). [CLS] and the protected question tokens rank above the rest and never fill every kept
    slot, so they are simply kept; the rest are the most significant others, equal ones in index order (as
    TopK breaks ties, and as the eager stable sort does).
    """
    by_question = top_indices(torch.where(question, significance, -math.inf), keep_question)
    protected = torch.zeros_like(question).scatter(0, by_question, torch.ones_like(by_question, dtype=torch.bool))
    forced = (protected & question) | first
    return top_indices(torch.where(forced, math.inf, significance), keep).sort().values


def top_indices(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The indices of the `k` largest of `values` (T,), equal values in index order: as ONNX's TopK breaks ties,
    and, eagerly, where `torch.topk` promises no order, as a stable sort does."""
    if torch.onnx.is_in_onnx_export():
        return values.topk(k).indices
    return values.argsort(descending=True, stable=True)[:k]


class AdaptiveWindowGraph(nn.Module):
    """The model over one unpadded window: (ids (1, T), types (1, T), keep (L,), keep_question (L,)) -> (2, T)
    start and end logits. Layer i keeps `keep[i]` of the tokens it is given (at most those), `keep_question[i]`
    of them protected question tokens; `window_feed` makes these inputs."""

    def __init__(self, model: BertForQuestionAnswering) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the export puts a module back in the mode it found it in, and its children with it

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, keep: torch.Tensor, keep_question: torch.Tensor
    ) -> torch.Tensor:
        bert = self.model.bert
        mask = torch.ones_like(input_ids, dtype=torch.bool)  # (1, T): every token real
        question = (token_ranks(mask, token_type_ids, protect_question=True) == RANK_QUESTION)[0]  # (T,)
        x = bert.embeddings(input_ids, token_type_ids)  # (1, T, H)
        positions = torch.ones_like(input_ids[0]).cumsum(dim=0) - 1  # (K,) original index of each token
        restored = torch.zeros_like(x[0])  # (T, H)
        for i, layer in enumerate(bert.encoder.layer):
            if layer.token_scorer is None:  # attention ranking needs the scores themselves
                attended, scores = layer.attention(x, mask, need_scores=True)
                significance = layer.significance(attended, scores, mask)[0]
            else:
                attended = attend(layer.attention, x)
                significance = layer.significance(attended, None, mask)[0]
            index = select_in_window(significance, question, positions == 0, keep[i], keep_question[i])
            restored = restored.index_put((positions,), x[0])  # dropped tokens keep this layer's input
            attended = attended.index_select(1, index)
            positions, question = positions.index_select(0, index), question.index_select(0, index)
            mask = mask.index_select(1, index)
            x = layer.feed_forward(attended)
        hidden = restored.index_put((positions,), x[0])
        return self.model.qa_outputs(hidden).t()


def window_feed(
    input_ids: torch.Tensor, token_type_ids: torch.Tensor, length_config: LengthConfig | None, layers: int
) -> dict[str, np.ndarray]:
    """The graph's inputs for one unpadded window (T,) under `length_config` (None: full length) in a model of
    `layers` layers: each layer's keep count, and the half of it protected for question tokens under `+q`."""
    length = torch.tensor([input_ids.shape[0]])
    if is_full_length(length_config):
        keep, protect = length.repeat(layers), False
    else:
        keep, protect = length_config.keep_counts(length)[0], length_config.protect_question
    return {
        "input_ids": input_ids.numpy()[None],
        "token_type_ids": token_type_ids.numpy()[None],
        "keep": keep.numpy(),
        "keep_question": (keep // 2 if protect else torch.zeros_like(keep)).numpy(),
    }


def export(model: BertForQuestionAnswering) -> bytes:
    """The fp32 model as a serialised ONNX graph (`AdaptiveWindowGraph`), its length dynamic."""
    layers = model.config.num_hidden_layers
    # question tokens (type 0) and protection on, so that the trace keeps the branch that caps them
    ids = torch.full((12,), min(100, model.config.vocab_size - 1), dtype=torch.long)
    types = torch.tensor([0] * 5 + [1] * 7)
    dropping = LengthConfig.tokens([12 - min(i, 6) for i in range(layers)], protect_question=True)
    example = tuple(torch.from_numpy(v) for v in window_feed(ids, types, dropping, layers).values())
    buffer = io.BytesIO()
    # the tracer's notes on the Python branches it fixes (every window unpadded, question tokens possible) are
    # the graph's design, checked by tests/test_engines.py
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            AdaptiveWindowGraph(model),
            example,
            buffer,
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_axes={"input_ids": {1: "tokens"}, "token_type_ids": {1: "tokens"}, "logits": {1: "tokens"}},
            opset_version=OPSET,
            custom_opsets={"com.microsoft": 1},
            dynamo=False,
        )
    return buffer.getvalue()


def quantize_int8(graph: bytes) -> bytes:
    """ONNX Runtime's dynamic int8 of an exported graph: every encoder projection with per-channel int8 weights.
    The token scorers, which decide which tokens survive, and the span head stay fp32, as on torch
    (`precision.py`). Unlike torch's int8, the first feed-forward output projection is quantised too; why, and
    what finer schemes were tried: docs/experiments/onnx-engine.md."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(graph)
    shapes = {w.name: tuple(w.dims) for w in proto.graph.initializer}
    # a projection multiplies by a weight (an initializer, in x out) with more outputs than the scorers' 1 and
    # the span head's 2
    projections = [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2 and shapes[n.input[1]][1] > 2
    ]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        logging.disable(logging.WARNING)  # the quantiser's advice to pre-process first, logged on the root logger
        try:
            quantize_dynamic(
                source,
                target,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=projections,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # shape inference skips contrib ops
            )
        finally:
            logging.disable(logging.NOTSET)
        return target.read_bytes()
