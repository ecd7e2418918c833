"""The competitors `dtb bench` measures, by name: this project, the transformers pipeline, ONNX Runtime.

A *system* is one competitor at one setting, named like `project:frontier2:int8@32` (kind, options, batch
size). `build` turns it into a function from questions and contexts to answer texts.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..frontier import FILENAME as FRONTIER_FILE
from ..frontier import Frontier
from ..length_config import LengthConfig
from ..options import AnswerOptions
from ..precision import PRECISIONS
from ..runtime import keep_freed_memory

KINDS = {
    "project": "dynamic-tinybert",
    "transformers": "transformers pipeline",
    "onnxruntime": "ONNX Runtime (optimum)",
}
# Enough to show the target: the frontier against the pipeline's best batch size, and single-question latency.
DEFAULT_SYSTEMS = (
    "project@1",
    "project@32",
    "project:frontier@1",
    "project:frontier@32",
    "project:bf16@32",
    "project:int8@32",
    "transformers@1",
    "transformers@8",
    "transformers@32",
    "onnxruntime@1",
    "onnxruntime@32",
)
# On a GPU: bf16 weights, single questions and large batches (ONNX Runtime and int8 are CPU systems here).
GPU_DEFAULT_SYSTEMS = (
    "project:bf16@1",
    "project:bf16@256",
    "project:frontier:bf16@256",
    "transformers:bf16@1",
    "transformers:bf16@64",
    "transformers:bf16@256",
)
INSTALL_HINT = 'pip install -e ".[bench]"'
_NEEDS = {"transformers": ("transformers",), "onnxruntime": ("transformers", "optimum.onnxruntime", "onnxruntime")}
_SYSTEM_RE = re.compile(r"(?P<kind>[a-z]+)(?P<options>(:[a-z0-9]+)*)(@(?P<batch>\d+))?")


@dataclass(frozen=True)
class System:
    """One competitor at one setting; the length config and precision apply to the project only."""

    kind: str
    batch_size: int = 32
    precision: str = "fp32"  # the project: fp32, bf16 or int8; the transformers pipeline: fp32 or bf16
    length_config: LengthConfig | None = None
    point: int | None = None  # index into the model's frontier (cheapest first); None: full length

    @property
    def name(self) -> str:
        """The name `parse_systems` reads back into this system."""
        options = [] if self.point is None else [f"frontier{self.point}"]
        if self.precision != "fp32":
            options.append(self.precision)
        return ":".join([self.kind, *options]) + f"@{self.batch_size}"


def parse_systems(names: Sequence[str], frontier: Frontier | None) -> list[System]:
    """Systems from names: `KIND[:OPTION...][@BATCH]`, batch 32 unless given.

    KIND is project, transformers or onnxruntime. The project's options: a precision (fp32, bf16, int8),
    `full` (the default), `frontier` (one system per point of the model's pareto.json) or `frontierN`
    (point N only, cheapest first). The transformers pipeline takes a precision, fp32 or bf16 (its weights
    cast, as `dtype=torch.bfloat16` does); ONNX Runtime none.
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
        if kind == "onnxruntime":
            if options:
                raise ValueError(f"system {name!r}: {kind} takes no options, only a batch size (@N)")
            systems.append(System(kind, batch_size))
            continue
        if kind == "transformers":
            if options not in ([], ["fp32"], ["bf16"]):
                raise ValueError(f"system {name!r}: {kind} takes one option, a precision (fp32 or bf16)")
            systems.append(System(kind, batch_size, *options))
            continue
        precisions = [o for o in options if o in PRECISIONS]
        lengths = [o for o in options if o not in PRECISIONS]
        if len(precisions) > 1 or len(lengths) > 1 or not all(re.fullmatch(r"full|frontier\d*", o) for o in lengths):
            raise ValueError(
                f"system {name!r}: project options are one precision ({', '.join(PRECISIONS)}) "
                "and one of full, frontier, frontierN"
            )
        precision = precisions[0] if precisions else "fp32"
        length = lengths[0] if lengths else "full"
        if length == "full":
            systems.append(System(kind, batch_size, precision))
            continue
        if frontier is None:
            raise ValueError(f"system {name!r}: the model has no frontier ({FRONTIER_FILE}); run `dtb search` first")
        indices = range(len(frontier.points)) if length == "frontier" else [int(length.removeprefix("frontier"))]
        for i in indices:
            if i >= len(frontier.points):
                raise ValueError(f"system {name!r}: the frontier has points 0 to {len(frontier.points) - 1}")
            systems.append(System(kind, batch_size, precision, frontier.points[i].length_config, i))
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
    device: str = "cpu"  # where the project and the transformers pipeline run; ONNX Runtime: the CPU only


Answer = Callable[[list[str], list[str]], list[str]]


def build(system: System, work: Workload) -> Answer:
    """The system as a function from questions and contexts to answer texts (the empty string for none)."""
    if system.kind == "project":
        from ..pipeline import QuestionAnswerer

        keep_freed_memory()  # a long batch job, as `dtb eval` runs it
        qa = QuestionAnswerer.from_pretrained(
            work.model_dir,
            device=work.device,
            precision=system.precision,
            **work.options.pipeline_kwargs(),
            length_config=system.length_config,
            batch_size=system.batch_size,
        )
        return lambda questions, contexts: [
            best[0]["answer"] if best else "" for best in qa.run(questions, contexts).answers
        ]

    import transformers

    if system.kind == "transformers":
        pipeline = transformers.pipeline(
            "question-answering",
            model=str(work.model_dir),
            tokenizer=str(work.model_dir),
            device=work.device,
            dtype=torch.bfloat16 if system.precision == "bf16" else torch.float32,
        )
    else:
        import onnxruntime
        from optimum.onnxruntime import ORTModelForQuestionAnswering

        session = onnxruntime.SessionOptions()
        session.intra_op_num_threads, session.inter_op_num_threads = work.threads, 1
        model = ORTModelForQuestionAnswering.from_pretrained(work.onnx_dir, session_options=session)
        tokenizer = transformers.AutoTokenizer.from_pretrained(work.model_dir)
        pipeline = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer)

    def answer(questions: list[str], contexts: list[str]) -> list[str]:
        out = pipeline(
            question=questions, context=contexts, batch_size=system.batch_size, **work.options.pipeline_kwargs()
        )
        out = [out] if isinstance(out, dict) else out  # the pipeline unwraps a single answer
        return [a["answer"] if isinstance(a, dict) else "" for a in out]

    return answer
