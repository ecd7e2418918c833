"""The length-adaptive model as one ONNX graph whose per-layer keep counts are inputs, for ONNX Runtime.

One exported graph serves every length configuration and budget: the counts a `LengthConfig` gives a window
are fed with its tokens, and the graph selects, gathers and restores tokens itself, with the same functions
the eager encoder uses (`select_tokens`, `restore`). It takes one unpadded window at a time, so it needs no
attention mask, and every layer selects (keeping all its tokens where the count says so).

The export is made in memory when a model is loaded and never read from a file: weights only ever come from
the checkpoint. int8 is ONNX Runtime's dynamic quantisation of the export (int8 weights per output channel,
activations quantised as each call runs).
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .model import (
    RANK_QUESTION,
    RANK_TOKEN,
    BertAttention,
    BertForQuestionAnswering,
    restore,
    select_tokens,
    token_ranks,
)

INPUTS = ("input_ids", "token_type_ids", "keep", "protect_question")
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
        out.setType(q.type())
        return out


def attend(attention: BertAttention, x: torch.Tensor) -> torch.Tensor:
    """`BertAttention` over one unpadded window, its core fused (`FusedAttention`)."""
    s = attention.self
    return attention.output(FusedAttention.apply(s.query(x), s.key(x), s.value(x), s.num_heads), x)


class AdaptiveWindowGraph(nn.Module):
    """The model over one unpadded window: (ids (1, T), types (1, T), keep (L,), protect_question ()) -> (2, T)
    start and end logits. `keep[i]` is how many tokens layer i keeps (at most those it is given)."""

    def __init__(self, model: BertForQuestionAnswering) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the export puts a module back in the mode it found it in, and its children with it

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, keep: torch.Tensor, protect_question: torch.Tensor
    ) -> torch.Tensor:
        bert = self.model.bert
        mask = torch.ones_like(input_ids, dtype=torch.bool)  # (1, T): every token real
        rank = token_ranks(mask, token_type_ids, protect_question=True)
        rank = torch.where(protect_question | (rank != RANK_QUESTION), rank, RANK_TOKEN)
        x = bert.embeddings(input_ids, token_type_ids)  # (1, T, H)
        positions = torch.ones_like(input_ids).cumsum(dim=1) - 1  # (1, K) original index of each slot
        restored = torch.zeros_like(x)
        for i, layer in enumerate(bert.encoder.layer):
            if layer.token_scorer is None:  # attention ranking needs the scores themselves
                attended, scores = layer.attention(x, mask, need_scores=True)
            else:
                attended, scores = attend(layer.attention, x), None
            significance = layer.significance(attended, scores, mask)
            kept = torch.minimum(keep[i : i + 1], mask.sum(dim=1))  # (1,)
            index, mask = select_tokens(significance, mask, rank, kept)
            restored = restore(restored, x, positions)  # dropped tokens keep this layer's input
            attended = attended.gather(1, index.unsqueeze(-1).expand(-1, -1, attended.shape[-1]))
            positions, rank = positions.gather(1, index), rank.gather(1, index)
            x = layer.feed_forward(attended)
        hidden = restore(restored, x, positions)
        return self.model.qa_outputs(hidden)[0].t()


def export(model: BertForQuestionAnswering) -> bytes:
    """The fp32 model as a serialised ONNX graph (`AdaptiveWindowGraph`), its length dynamic."""
    layers = model.config.num_hidden_layers
    # question tokens (type 0) and protection on, so that the trace keeps the branch that caps them
    ids = torch.full((1, 12), min(100, model.config.vocab_size - 1), dtype=torch.long)
    types = torch.tensor([[0] * 5 + [1] * 7])
    keep = torch.tensor([12 - min(i, 6) for i in range(layers)])
    buffer = io.BytesIO()
    # the tracer's notes on the Python branches it fixes (every window unpadded, question tokens possible) are
    # the graph's design, checked by tests/test_engines.py
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            AdaptiveWindowGraph(model),
            (ids, types, keep, torch.tensor(True)),
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
