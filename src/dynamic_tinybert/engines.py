"""Where the model runs: eager torch, or ONNX Runtime over the exported length-adaptive graph.

Both take a batch of windows and a length configuration and return their start and end logits, so that
`QuestionAnswerer` answers the same way on either. Eager torch runs any device, precision and batch size.
ONNX Runtime runs on the CPU in fp32 or int8, one window per call: the graph (`onnx_export.py`) has no
padding to mask, and a call costs little next to a window. Its fp32 gives torch's logits (within 1e-6 or so);
its int8 is ONNX Runtime's own dynamic quantisation, which on CPUs with VNNI runs faster than the eager int8
and bf16 paths (docs/experiments/onnx-adaptive-encoder.md).

`auto`, the default, picks ONNX Runtime for int8 on the CPU where onnxruntime is installed (the `onnx`
extra), and eager torch otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Protocol

import numpy as np
import torch

from .features import Batch
from .length_config import LengthConfig, is_full_length
from .model import BertForQuestionAnswering
from .precision import precision_of, with_precision

ENGINES = ("auto", "torch", "onnxruntime")
ONNX_PRECISIONS = ("fp32", "int8")
INSTALL_HINT = 'pip install -c constraints.txt -e ".[onnx]"'


class Engine(Protocol):
    name: str
    precision: str
    max_batch: int | None  # windows per call; None: any number

    def logits(self, batch: Batch, length_config: LengthConfig | None) -> np.ndarray:
        """Start and end logits (2, B, T) of a batch's windows, fp32, padded positions included."""
        ...


class TorchEngine:
    """The model's own forward pass, in the precision `with_precision` gave it."""

    name = "torch"
    max_batch = None

    def __init__(self, model: BertForQuestionAnswering) -> None:
        self.model = model
        self.precision = precision_of(model)

    @torch.inference_mode()
    def logits(self, batch: Batch, length_config: LengthConfig | None) -> np.ndarray:
        device = next(self.model.parameters()).device
        out = self.model(
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.token_type_ids.to(device),
            length_config=length_config,
        )
        return torch.stack([out.start_logits, out.end_logits]).float().cpu().numpy()


class OnnxRuntimeEngine:
    """The exported length-adaptive graph on ONNX Runtime's CPU provider, one window per call."""

    name = "onnxruntime"
    max_batch = 1

    def __init__(self, model: BertForQuestionAnswering, precision: str = "fp32", threads: int | None = None) -> None:
        import onnxruntime

        from .onnx_export import export, quantize_int8

        if precision not in ONNX_PRECISIONS:
            raise ValueError(f"the onnxruntime engine runs {' or '.join(ONNX_PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.layers = model.config.num_hidden_layers
        graph = export(model)
        if precision == "int8":
            logging.disable(logging.WARNING)  # the quantiser's advice to pre-process, on the root logger
            try:
                graph = quantize_int8(graph)
            finally:
                logging.disable(logging.NOTSET)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def logits(self, batch: Batch, length_config: LengthConfig | None) -> np.ndarray:
        if batch.input_ids.shape[0] != 1 or not bool(batch.attention_mask.all()):
            raise ValueError("the onnxruntime engine takes one unpadded window per call")
        real = batch.attention_mask.sum(dim=1)
        full = is_full_length(length_config)
        keep = real.repeat(self.layers) if full else length_config.keep_counts(real)[0]
        feed = {
            "input_ids": batch.input_ids.numpy(),
            "token_type_ids": batch.token_type_ids.numpy(),
            "keep": keep.numpy(),
            "protect_question": np.array(not full and length_config.protect_question),
        }
        return self.session.run(None, feed)[0][:, None, :]  # (2, 1, T)


def has_onnxruntime() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def choose_engine(engine: str, precision: str, device: str | torch.device) -> str:
    """The engine `engine` means here: auto is onnxruntime for int8 on the CPU where it is installed, else torch.
    A one-line error for a choice that cannot run."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    on_cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        return "onnxruntime" if on_cpu and precision == "int8" and has_onnxruntime() else "torch"
    if engine == "onnxruntime":
        if not on_cpu:
            raise ValueError("the onnxruntime engine runs on the CPU only; on a GPU use --engine torch")
        if precision not in ONNX_PRECISIONS:
            raise ValueError(f"the onnxruntime engine runs fp32 or int8, not {precision}; bf16 runs on torch")
        if not has_onnxruntime():
            raise ImportError(f"the onnxruntime engine needs onnxruntime and onnx: {INSTALL_HINT}")
    return engine


def build_engine(
    model: BertForQuestionAnswering, engine: str, precision: str
) -> tuple[Engine, BertForQuestionAnswering]:
    """The engine (`choose_engine`'s name) running `model` in `precision`, and the eager model kept beside it:
    the converted one for torch, the fp32 one for ONNX Runtime (tracing and `explain` run it)."""
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(model, precision), model
    converted = with_precision(model, precision)
    return TorchEngine(converted), converted
