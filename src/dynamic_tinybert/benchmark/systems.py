"""The competitors `dtb bench` measures, by name: this project, the transformers pipeline, ONNX Runtime, OpenVINO.

A *system* is one competitor at one setting, named like `project:frontier2:int8@32` (kind, options, batch
size). `build` turns it into a function from questions and contexts to answer texts, and says what precision
it runs in.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..engines import ENGINES
from ..frontier import FILENAME as FRONTIER_FILE
from ..frontier import Frontier
from ..length_config import LengthConfig
from ..options import AnswerOptions
from ..precision import PRECISIONS
from ..runtime import keep_freed_memory

if TYPE_CHECKING:  # the peers' packages are the bench extra's, imported only where a peer is built
    from optimum.intel import OVModelForQuestionAnswering
    from optimum.onnxruntime import ORTModelForQuestionAnswering

KINDS = {
    "project": "dynamic-tinybert",
    "transformers": "transformers pipeline",
    "onnxruntime": "ONNX Runtime (optimum)",
    "openvino": "OpenVINO (optimum-intel)",
}
CPU_ONLY_KINDS = ("onnxruntime", "openvino")
# Enough to show the target: the frontier against the pipeline's best batch size, and single-question latency.
DEFAULT_SYSTEMS = (
    "project@1",
    "project@32",
    "project:frontier@1",
    "project:frontier@32",
    "project:bf16@32",
    "project:int8:torch@32",
    "project:int8@1",  # int8 runs on the onnxruntime engine where it is installed (engines.choose_engine)
    "project:int8@32",
    "project:frontier:int8@32",
    "transformers@1",
    "transformers@8",
    "transformers@32",
    "onnxruntime@1",
    "onnxruntime@32",
    "onnxruntime:int8@1",
    "onnxruntime:int8@32",
    "openvino@1",
    "openvino@8",
    "openvino@32",
    "openvino:fp32@1",
)
# On a GPU: bf16 weights, single questions and large batches (ONNX Runtime, OpenVINO and int8 are CPU systems here).
GPU_DEFAULT_SYSTEMS = (
    "project:bf16@1",
    "project:bf16@256",
    "project:frontier:bf16@256",
    "transformers:bf16@1",
    "transformers:bf16@64",
    "transformers:bf16@256",
)
INSTALL_HINT = 'pip install -e ".[bench]"'
_NEEDS = {
    "transformers": ("transformers",),
    "onnxruntime": ("transformers", "optimum.onnxruntime", "onnxruntime"),
    "openvino": ("transformers", "optimum.intel", "openvino"),
}
# The precision a system runs in when its name gives none; OpenVINO's is its own choice, read back once compiled.
OPENVINO_DEFAULT = "default"
_DEFAULT_PRECISION = {"openvino": OPENVINO_DEFAULT}
# A precision option each peer takes, beside its default.
_PEER_PRECISIONS = {"transformers": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32",)}
_SYSTEM_RE = re.compile(r"(?P<kind>[a-z]+)(?P<options>(:[a-z0-9]+)*)(@(?P<batch>\d+))?")


@dataclass(frozen=True)
class System:
    """One competitor at one setting; the length config and precision apply to the project only."""

    kind: str
    batch_size: int = 32
    precision: str = "fp32"  # the precision asked for (`_PEER_PRECISIONS`); OpenVINO's own choice: OPENVINO_DEFAULT
    length_config: LengthConfig | None = None
    point: int | None = None  # index into the model's frontier (cheapest first); None: full length
    engine: str = "auto"  # what runs the project's model (`engines.ENGINES`)

    @property
    def name(self) -> str:
        """The name `parse_systems` reads back into this system."""
        options = [] if self.point is None else [f"frontier{self.point}"]
        if self.precision != _DEFAULT_PRECISION.get(self.kind, "fp32"):
            options.append(self.precision)
        if self.engine != "auto":
            options.append(self.engine)
        return ":".join([self.kind, *options]) + f"@{self.batch_size}"


def parse_systems(names: Sequence[str], frontier: Frontier | None) -> list[System]:
    """Systems from names: `KIND[:OPTION...][@BATCH]`, batch 32 unless given.

    KIND is project, transformers, onnxruntime or openvino. The project's options: a precision (fp32, bf16,
    int8), `full` (the default), `frontier` (one system per point of the model's pareto.json) or `frontierN`
    (point N only, cheapest first), and an engine (torch or onnxruntime; without one, `engines.choose_engine`'s
    auto). The peers take at most one option, a precision: the transformers pipeline
    fp32 or bf16 (its weights cast, as `dtype=torch.bfloat16` does), ONNX Runtime fp32 or int8 (optimum's
    dynamic quantisation), OpenVINO fp32 (without it, OpenVINO's own precision hint: bf16 on a CPU with bf16).
    """
    systems: list[System] = []
    for name in names:
        match = _SYSTEM_RE.fullmatch(name.strip())
        if match is None or match["kind"] not in KINDS:
            raise ValueError(
                f"unknown system {name!r}: expected KIND[:OPTION...][@BATCH], KIND one of {', '.join(KINDS)}"
            )
        kind, options = match["kind"], [o for o in match["options"].split(":") if o]
        batch_size = int(match["batch"] or 32)
        if batch_size < 1:
            raise ValueError(f"system {name!r}: the batch size must be >= 1")
        if kind in _PEER_PRECISIONS:
            if options and (len(options) > 1 or options[0] not in _PEER_PRECISIONS[kind]):
                precisions = " or ".join(_PEER_PRECISIONS[kind])
                raise ValueError(f"system {name!r}: {kind} takes one option, a precision ({precisions})")
            systems.append(System(kind, batch_size, options[0] if options else _DEFAULT_PRECISION.get(kind, "fp32")))
            continue
        precisions = [o for o in options if o in PRECISIONS]
        engines = [o for o in options if o in ENGINES]
        lengths = [o for o in options if o not in PRECISIONS and o not in ENGINES]
        if (
            len(precisions) > 1
            or len(engines) > 1
            or len(lengths) > 1
            or not all(re.fullmatch(r"full|frontier\d*", o) for o in lengths)
        ):
            raise ValueError(
                f"system {name!r}: project options are one precision ({', '.join(PRECISIONS)}), one of full, "
                f"frontier, frontierN, and one engine ({', '.join(ENGINES)})"
            )
        precision = precisions[0] if precisions else "fp32"
        engine = engines[0] if engines else "auto"
        length = lengths[0] if lengths else "full"
        if length == "full":
            systems.append(System(kind, batch_size, precision, engine=engine))
            continue
        if frontier is None:
            raise ValueError(f"system {name!r}: the model has no frontier ({FRONTIER_FILE}); run `dtb search` first")
        indices = range(len(frontier.points)) if length == "frontier" else [int(length.removeprefix("frontier"))]
        for i in indices:
            if i >= len(frontier.points):
                raise ValueError(f"system {name!r}: the frontier has points 0 to {len(frontier.points) - 1}")
            systems.append(System(kind, batch_size, precision, frontier.points[i].length_config, i, engine))
    return systems


def check_dependencies(systems: Sequence[System]) -> None:
    """Fail before anything runs if a competitor's packages are missing: one line naming the extra."""
    for kind in dict.fromkeys(s.kind for s in systems):
        missing = [m for m in _NEEDS.get(kind, ()) if not _importable(m)]
        if missing:
            raise ImportError(f"the {kind} system needs {', '.join(missing)}: {INSTALL_HINT}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


@dataclass(frozen=True)
class Workload:
    """What every system answers, and the settings they all share."""

    model_dir: Path
    questions: list[str]
    contexts: list[str]
    options: AnswerOptions  # the answering settings every system shares (the project: also its batch and length)
    threads: int
    warmup: int  # untimed questions answered first (at least one full batch)
    onnx_dir: Path | None = None  # the exported model, for the onnxruntime systems
    device: str = "cpu"  # where the project and the transformers pipeline run; ONNX Runtime, OpenVINO: the CPU
    onnx_int8_dir: Path | None = None  # the exported model quantised to int8, for onnxruntime:int8
    openvino_dir: Path | None = None  # the model converted to OpenVINO, for the openvino systems


Answer = Callable[[list[str], list[str]], list[str]]


@dataclass(frozen=True)
class Built:
    """A system ready to answer, and the precision it runs in: OpenVINO's is known only once compiled."""

    answer: Answer
    precision: str
    engine: str | None = None  # what ran the project's model; None: a peer


def build(system: System, work: Workload) -> Built:
    """The system as a function from questions and contexts to answer texts (the empty string for none), with
    the precision it runs in."""
    if system.kind == "project":
        from ..pipeline import QuestionAnswerer

        keep_freed_memory()  # a long batch job, as `dtb eval` runs it
        qa = QuestionAnswerer.from_pretrained(
            work.model_dir,
            device=work.device,
            precision=system.precision,
            engine=system.engine,
            **work.options.pipeline_kwargs(),
            length_config=system.length_config,
            batch_size=system.batch_size,
        )

        def project_answer(questions: list[str], contexts: list[str]) -> list[str]:
            return [best[0]["answer"] if best else "" for best in qa.run(questions, contexts).answers]

        return Built(project_answer, system.precision, qa.engine.name)

    import transformers

    precision = system.precision  # as asked; a peer's compiled model says what it runs in
    if system.kind == "transformers":
        pipeline = transformers.pipeline(
            "question-answering",
            model=str(work.model_dir),
            tokenizer=str(work.model_dir),
            device=work.device,
            dtype=torch.bfloat16 if system.precision == "bf16" else torch.float32,
        )
    else:
        peer_model = _onnxruntime_model if system.kind == "onnxruntime" else _openvino_model
        model, precision = peer_model(system, work)
        tokenizer = transformers.AutoTokenizer.from_pretrained(work.model_dir)
        pipeline = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer)

    def answer(questions: list[str], contexts: list[str]) -> list[str]:
        out = pipeline(
            question=questions, context=contexts, batch_size=system.batch_size, **work.options.pipeline_kwargs()
        )
        out = [out] if isinstance(out, dict) else out  # the pipeline unwraps a single answer
        return [a["answer"] if isinstance(a, dict) else "" for a in out]

    return Built(answer, precision)


def _onnxruntime_model(system: System, work: Workload) -> tuple[ORTModelForQuestionAnswering, str]:
    """optimum's ONNX Runtime model of the export (int8: its quantised copy) on `threads` intra-op threads, and
    its precision."""
    import onnxruntime
    from optimum.onnxruntime import ORTModelForQuestionAnswering

    session = onnxruntime.SessionOptions()
    session.intra_op_num_threads, session.inter_op_num_threads = work.threads, 1
    folder = work.onnx_int8_dir if system.precision == "int8" else work.onnx_dir
    return ORTModelForQuestionAnswering.from_pretrained(folder, session_options=session), system.precision


_OPENVINO_PRECISIONS = {"f32": "fp32", "f16": "fp16"}  # OpenVINO's type names as the other systems spell them


def _openvino_model(system: System, work: Workload) -> tuple[OVModelForQuestionAnswering, str]:
    """optimum-intel's OpenVINO model compiled for the CPU on `threads` threads, and the precision OpenVINO chose.

    The performance hint stays optimum-intel's, LATENCY (one stream using every thread): the pipeline makes one
    call at a time, which THROUGHPUT's several narrower streams would not speed up (docs/benchmarks.md).
    """
    from optimum.intel import OVModelForQuestionAnswering

    config = {"INFERENCE_NUM_THREADS": str(work.threads)}
    if system.precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    model = OVModelForQuestionAnswering.from_pretrained(work.openvino_dir, ov_config=config)
    chosen = model.request.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16", "f16"
    return model, _OPENVINO_PRECISIONS.get(chosen, chosen)
