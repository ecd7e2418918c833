"""Where the model runs: eager torch, or ONNX Runtime over the exported length-adaptive graph.

Both take a batch of windows and a length configuration and return their start and end logits, so that
`QuestionAnswerer` answers the same way on either. Eager torch runs any device and precision, a batch at a time.
ONNX Runtime runs on the CPU in fp32 or int8, one unpadded window per call (the graph, `onnx_export.py`, has no
padding to mask): a lone window gets every thread, and the windows of a batch run side by side, one thread
and one session each, which keeps every core busy through the graph's many small operators where splitting
each of them across threads does not. Its fp32 gives torch's logits (the tests hold it to 1e-4); its int8 is
ONNX Runtime's own dynamic quantisation. How the two engines compare: docs/experiments/onnx-engine.md.

`auto`, the default, picks ONNX Runtime for int8 on the CPU where onnxruntime is installed (the `onnx`
extra), and eager torch otherwise.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from .features import Batch
from .length_config import LengthConfig
from .model import BertForQuestionAnswering
from .onnx_export import export, quantize_int8, window_feed
from .precision import precision_of, with_precision

ENGINES = ("auto", "torch", "onnxruntime")
ONNX_PRECISIONS = ("fp32", "int8")
INSTALL_HINT = 'pip install -c constraints.txt -e ".[onnx]"'


class Engine(Protocol):
    name: str
    precision: str

    def logits(self, batch: Batch, length_config: LengthConfig | None) -> np.ndarray:
        """Start and end logits (2, B, T) of a batch's windows, fp32, padded positions included."""
        ...


class TorchEngine:
    """The model's own forward pass, in the precision `with_precision` gave it."""

    name = "torch"

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
    """The exported length-adaptive graph on ONNX Runtime's CPU provider, one window per call: a lone window on
    every thread, a batch's windows side by side, each worker thread with a session of its own."""

    name = "onnxruntime"

    def __init__(self, model: BertForQuestionAnswering, precision: str = "fp32", threads: int | None = None) -> None:
        import onnxruntime

        if precision not in ONNX_PRECISIONS:
            raise ValueError(f"the onnxruntime engine runs {' or '.join(ONNX_PRECISIONS)}, not {precision!r}")
        self.precision = precision
        self.layers = model.config.num_hidden_layers
        graph = export(model)
        if precision == "int8":
            graph = quantize_int8(graph)
        threads = threads or torch.get_num_threads()

        def session(threads: int):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # its fused skip-and-LayerNorm kernel is slower on the CPU than the Add and LayerNormalization it replaces
            return onnxruntime.InferenceSession(
                graph, options, providers=["CPUExecutionProvider"], disabled_optimizers=["SkipLayerNormFusion"]
            )

        self.session = session(threads)  # a lone window
        self.side_by_side = None
        if threads > 1:  # a session per worker thread: threads sharing one session slow each other down
            sessions = queue.SimpleQueue()
            for _ in range(threads):
                sessions.put(session(1))
            own = threading.local()

            def take_a_session() -> None:
                own.session = sessions.get()

            pool = ThreadPoolExecutor(threads, "onnxruntime", initializer=take_a_session)
            self.side_by_side = (own, pool)

    def logits(self, batch: Batch, length_config: LengthConfig | None) -> np.ndarray:
        real = batch.attention_mask.sum(dim=1).tolist()
        feeds = [
            window_feed(batch.input_ids[row, :n], batch.token_type_ids[row, :n], length_config, self.layers)
            for row, n in enumerate(real)
        ]
        if len(feeds) == 1 or self.side_by_side is None:
            outputs = [self.session.run(None, feed)[0] for feed in feeds]
        else:
            own, pool = self.side_by_side
            outputs = list(pool.map(lambda feed: own.session.run(None, feed)[0], feeds))
        logits = np.zeros((2, *batch.input_ids.shape), dtype=np.float32)  # padded positions: 0
        for row, out in enumerate(outputs):
            logits[:, row, : out.shape[1]] = out
        return logits


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
