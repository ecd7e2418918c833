"""Lower-precision encoder Linear layers for CPU inference: bf16 weights, or int8 weights and activations.

(On a GPU, bf16 is simply the whole model cast to bf16; int8 is CPU-only.)

The encoder's Linear layers do almost all of the model's MACs. On CPUs with native bf16 (AVX512-BF16,
AMX) a bf16 matmul runs several times faster than fp32; int8 (VNNI) has twice bf16's peak. In bf16 the
attention (queries, keys, values, the fused softmax(q k) v) and GELU run in bf16 too. Everything else stays
fp32: embeddings, the residual stream, LayerNorms, the significance scores that choose which tokens to
keep, and the span head. Weights are handed to oneDNN once in its own blocked layout (packed), not
reordered on every call.

int8 multiplies int8 weights (one scale per output row) by int8 activations with one scale per token,
measured as each batch runs, in int32: a scale per token keeps a token with a few large activations from
crushing every other token's to zero, as one scale per batch (torch's dynamic quantisation) did. The
first layer's feed-forward output projection (1536 -> 384 in MiniLM) stays in bf16 (fp32 on CPUs without
native bf16): its input, after GELU, has a few very large activations in a few channels, and
quantising it cost the most accuracy of any one layer (docs/experiments/int8-layers.md, int8-per-token.md).
"""

from __future__ import annotations

import copy
import functools
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


@functools.cache
def can_pack_int8_weights() -> bool:
    """Whether this torch has oneDNN's quantised Linear with packed weights (x86 builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


@functools.cache
def can_pack_weights() -> bool:
    """Whether this torch has oneDNN's packed-weight Linear (x86 builds do): same results, less work per call."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedWeightLinear(nn.Module):
    """A Linear layer that hands its weight to oneDNN packed at the first call and keeps the packed copy.

    The packed copy is an opaque oneDNN tensor: it is not saved, copied or pickled; a copy packs its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._packed: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_packed": None}


class BFloat16Linear(PackedWeightLinear):
    """A Linear layer whose weights are stored and multiplied in bf16; it returns `out_dtype` (fp32 by default).

    On the CPU the weight is packed into oneDNN's layout at the first call, so a call does not reorder it
    again; the results are bit for bit those of `F.linear`.
    """

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.bfloat16)
        if x.device.type != "cpu" or torch.is_grad_enabled() or not can_pack_weights():
            return F.linear(x, self.weight, self.bias).to(self.out_dtype)
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "").to(self.out_dtype)


class Int8Linear(PackedWeightLinear):
    """A Linear layer run as an int8 x int8 -> int32 matmul: weights with one scale per output row, activations
    quantised as they come with one scale per token (row). Returns `out_dtype`.

    On x86 the weight is packed for oneDNN's quantised Linear at the first call; elsewhere `torch._int_mm`
    multiplies. Both give the int32 products exactly.
    """

    def __init__(self, linear: nn.Linear, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("weight", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        bias = torch.zeros(weight.shape[0]) if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)
        self.register_buffer("weight_zero_points", torch.zeros(weight.shape[0], dtype=torch.long), persistent=False)
        self.out_dtype = out_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)
        quantised = torch.div(rows, scale).round_()
        out = torch.addcmul(self.bias, self._products(quantised), scale)
        return out.to(self.out_dtype).view(*x.shape[:-1], -1)

    def _products(self, quantised: torch.Tensor) -> torch.Tensor:
        """The rows' (whole numbers in [-127, 127], as floats) products with the weight, times its scales."""
        if not can_pack_int8_weights():
            return torch.mul(torch._int_mm(quantised.to(torch.int8), self.weight.t()), self.weight_scale)
        if self._packed is None:
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight, None)
        unsigned = quantised.add_(128).to(torch.uint8)  # oneDNN takes unsigned activations with a zero point
        return torch.ops.onednn.qlinear_pointwise(
            unsigned, 1.0, 128, self._packed, self.weight_scale, self.weight_zero_points, None, 1.0, 0, torch.float32,
            "none", [], "",
        )  # fmt: skip


def precision_of(model: BertForQuestionAnswering) -> str:
    """Which precision the encoder's Linear layers run in (what `with_precision` made of the model)."""
    if next(model.parameters()).dtype == torch.bfloat16:
        return "bf16"  # cast whole, as on a GPU
    kinds = {type(module) for module in model.bert.encoder.modules()}
    if Int8Linear in kinds:
        return "int8"
    return "bf16" if BFloat16Linear in kinds else "fp32"


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
            raise ValueError("precision 'int8' runs on the CPU only; on a GPU use bf16")
        return copy.deepcopy(model).to(torch.bfloat16).eval()  # GPUs run bf16 natively: every weight in bf16
    if precision == "bf16":
        warn_if_bf16_is_emulated("precision bf16")
    native_bf16 = cpu_has_native_bf16()

    def lower(linear: nn.Linear, out_dtype: torch.dtype, kept_in_float: bool) -> nn.Module:
        if precision == "int8" and not kept_in_float:
            return Int8Linear(linear, out_dtype if native_bf16 else torch.float32)
        if precision == "bf16" or native_bf16:
            return BFloat16Linear(linear, out_dtype)
        return linear  # int8 where bf16 is emulated: the first feed-forward output stays fp32

    model = copy.deepcopy(model).eval()
    first_feed_forward_output = model.bert.encoder.layer[0].output.dense
    for parent in list(model.bert.encoder.modules()):
        # Outputs stay bf16 up to the residual stream: attention (its scores ranked in fp32) and GELU run in
        # bf16 and the intermediate activations take half the memory; the two projections into the residual
        # stream return fp32.
        out_dtype = torch.float32 if isinstance(parent, BertSelfOutput | BertOutput) else torch.bfloat16
        for name, child in parent.named_children():
            if is_converted(name, child):
                setattr(parent, name, lower(child, out_dtype, child is first_feed_forward_output))
    return model
