"""Lower-precision encoder Linear layers for CPU inference: bf16 weights, or int8 dynamic quantisation.

(On a GPU, bf16 is simply the whole model cast to bf16; int8 is CPU-only.)

The encoder's Linear layers do almost all of the model's MACs. On CPUs with native bf16 (AVX512-BF16,
AMX) a bf16 matmul runs several times faster than fp32; int8 dynamic quantisation (fbgemm) helps on
CPUs without it. In bf16 the attention (queries, keys, values, the fused softmax(q k) v) and GELU run in
bf16 too. Everything else stays fp32: embeddings, the residual stream, LayerNorms, the significance
scores that choose which tokens to keep, and the span head. int8 also leaves each feed-forward output
projection (1536 -> 384 in MiniLM) in fp32: its input, after GELU, has a few very large activations, and
dynamic quantisation gives a whole batch's activations one scale (the layer study that chose this rule is
docs/experiments/int8-layers.md).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .model import BertForQuestionAnswering, BertOutput, BertSelfOutput, is_token_scorer

PRECISIONS = ("fp32", "bf16", "int8")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively here (AVX512-BF16 or AMX) rather than emulating them."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume yes, as torch itself does
        return True


def warn_if_bf16_is_emulated(what: str) -> None:
    """bf16 on a CPU without it (AVX2 only, e.g. many AMD EPYC) runs several times slower than fp32: say so."""
    if not cpu_has_native_bf16():
        warnings.warn(
            f"{what}: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 is emulated and runs several "
            "times slower than fp32; use fp32 (or int8 for inference)",
            stacklevel=3,
        )


class BFloat16Linear(nn.Module):
    """A Linear layer whose weights are stored and multiplied in bf16; it returns `out_dtype` (fp32 by default)."""

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(self.out_dtype)


def precision_of(model: BertForQuestionAnswering) -> str:
    """Which precision the encoder's Linear layers run in (what `with_precision` made of the model)."""
    if next(model.parameters()).dtype == torch.bfloat16:
        return "bf16"  # cast whole, as on a GPU
    for module in model.bert.encoder.modules():
        if isinstance(module, BFloat16Linear):
            return "bf16"
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            return "int8"
    return "fp32"


def is_converted(name: str, module: nn.Module) -> bool:
    """Whether an encoder module runs in the lower precision: every Linear layer but the token scorers, which
    decide which tokens survive (as attention ranking does in fp32) and cost next to nothing."""
    return isinstance(module, nn.Linear) and not is_token_scorer(name)


def with_precision(model: BertForQuestionAnswering, precision: str) -> BertForQuestionAnswering:
    """An inference copy of `model` whose encoder Linear layers run in `precision` (fp32: the model itself)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return model
    if next(model.parameters()).device.type != "cpu":
        if precision == "int8":
            raise ValueError("precision 'int8' (dynamic quantisation, fbgemm) runs on the CPU only; on a GPU use bf16")
        return copy.deepcopy(model).to(torch.bfloat16).eval()  # GPUs run bf16 natively: every weight in bf16
    if precision == "bf16":
        warn_if_bf16_is_emulated("precision bf16")
    model = copy.deepcopy(model).eval()
    encoder = model.bert.encoder
    if precision == "int8":
        # Per-channel weight scales: one scale per output row keeps small rows from rounding to zero.
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        with warnings.catch_warnings():  # torch deprecates torch.ao quantisation in favour of torchao
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
            feed_forward_outputs = {id(m.dense) for m in encoder.modules() if isinstance(m, BertOutput)}
            linears = {
                name: qconfig
                for name, m in encoder.named_modules()
                if is_converted(name, m) and id(m) not in feed_forward_outputs
            }
            model.bert.encoder = torch.ao.quantization.quantize_dynamic(encoder, linears, torch.qint8)
        return model
    for parent in list(encoder.modules()):
        # Outputs stay bf16 up to the residual stream: attention (its scores ranked in fp32) and GELU run in
        # bf16 and the intermediate activations take half the memory; the two projections into the residual
        # stream return fp32.
        out_dtype = torch.float32 if isinstance(parent, BertSelfOutput | BertOutput) else torch.bfloat16
        for name, child in parent.named_children():
            if is_converted(name, child):
                setattr(parent, name, BFloat16Linear(child, out_dtype))
    return model
