"""Side-by-side speed: this project against the transformers pipeline and ONNX Runtime, same weights and questions.

A *system* is one competitor at one setting, named like `project:frontier2:int8@32` (kind, options, batch
size). Each takes questions and contexts and returns answer texts; it is timed end to end (tokenisation,
model, decoding) with `time.perf_counter`, after an untimed warm-up, and its build (loading, ONNX session)
is timed apart. Every system is scored with the official SQuAD metric on the same questions, and runs in
a fresh process of its own, so that its peak RSS is its own and it inherits no warm caches. At batch size
1 each question is its own call, as a service answers single requests: that run gives p50/p90 latency.

    result = run_benchmark("path/to/checkpoint", load_squad("dev-v1.1.json.gz", limit=500), threads=1)
    write_results(result, "bench/results/speed")  # speed.md, speed.json, speed.png

The transformers and ONNX Runtime systems need the bench extra (`pip install -e ".[bench]"`); the
project's own systems need nothing beyond the library.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .features import make_windows, window_defaults
from .fileio import atomic_write, write_report
from .frontier import FILENAME as FRONTIER_FILE
from .frontier import Frontier, load_frontier
from .length_config import LengthConfig
from .precision import PRECISIONS
from .squad import SquadDataset, score_predictions

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
    options: dict  # max_answer_len, max_seq_len, doc_stride, max_question_len, handle_impossible_answer
    threads: int
    warmup: int  # untimed questions answered first (at least one full batch)
    onnx_dir: Path | None = None  # the exported model, for the onnxruntime systems
    device: str = "cpu"  # where the project and the transformers pipeline run; ONNX Runtime: the CPU only


Answer = Callable[[list[str], list[str]], list[str]]


def build(system: System, work: Workload) -> Answer:
    """The system as a function from questions and contexts to answer texts (the empty string for none)."""
    if system.kind == "project":
        from .pipeline import QuestionAnswerer

        qa = QuestionAnswerer.from_pretrained(
            work.model_dir,
            device=work.device,
            precision=system.precision,
            length_config=system.length_config,
            batch_size=system.batch_size,
            **work.options,
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
        out = pipeline(question=questions, context=contexts, batch_size=system.batch_size, **work.options)
        out = [out] if isinstance(out, dict) else out  # the pipeline unwraps a single answer
        return [a["answer"] if isinstance(a, dict) else "" for a in out]

    return answer


def measure(system: System, work: Workload) -> dict:
    """Build the system, warm it up, then time it on every question: answers, seconds, latencies, peak memory.

    Answers are texts, so every call ends with its results back on the host: GPU time is counted in full.
    """
    torch.set_num_threads(work.threads)
    on_gpu = torch.device(work.device).type == "cuda"
    started = time.perf_counter()
    answer = build(system, work)
    build_seconds = time.perf_counter() - started
    one_at_a_time = system.batch_size == 1
    warmup = max(work.warmup, system.batch_size)  # every kernel and buffer of a full batch is ready
    _answer_all(answer, work.questions[:warmup], work.contexts[:warmup], one_at_a_time)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(work.device)
    answers, call_seconds = _answer_all(answer, work.questions, work.contexts, one_at_a_time)
    return {
        "answers": answers,
        "build_seconds": build_seconds,
        "seconds": sum(call_seconds),
        "latencies_ms": [1000 * s for s in call_seconds] if one_at_a_time else None,
        "peak_rss_mib": peak_rss_mib(),
        "peak_gpu_mib": torch.cuda.max_memory_allocated(work.device) / 2**20 if on_gpu else None,
    }


def _answer_all(
    answer: Answer, questions: list[str], contexts: list[str], one_at_a_time: bool
) -> tuple[list[str], list[float]]:
    """(answer texts, wall seconds of each call): one call per question, or one call for all."""
    if not one_at_a_time:
        started = time.perf_counter()
        return answer(questions, contexts), [time.perf_counter() - started]
    answers, seconds = [], []
    for question, context in zip(questions, contexts):
        started = time.perf_counter()
        answers += answer([question], [context])
        seconds.append(time.perf_counter() - started)
    return answers, seconds


def _measure_alone(system: System, work: Workload) -> dict:
    """`measure` in a fresh process: the tokenizers' thread pool gets `threads` too (rayon reads this on first use)."""
    os.environ["RAYON_NUM_THREADS"] = str(work.threads)
    return measure(system, work)


def peak_rss_mib() -> float:
    """This process's peak resident memory. On Linux the kernel's VmHWM: a spawned child's ru_maxrss also
    counts its parent's memory at the fork."""
    if sys.platform == "linux":
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 2**10
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def onnx_export(model_dir: Path, cache_dir: Path) -> Path:
    """The checkpoint exported to ONNX by optimum, once: cached under a hash of its files."""
    from optimum.onnxruntime import ORTModelForQuestionAnswering

    key = hashlib.sha256(importlib.metadata.version("optimum-onnx").encode())
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and p.name != FRONTIER_FILE):
        key.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                key.update(chunk)
    target = Path(cache_dir) / key.hexdigest()[:24]
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
        try:
            with warnings.catch_warnings():  # TracerWarnings on transformers' mask code; tests check the answers
                warnings.simplefilter("ignore")
                ORTModelForQuestionAnswering.from_pretrained(model_dir, export=True).save_pretrained(staging)
            if not target.is_dir():  # another process may have finished the same export first
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamic-tinybert" / "onnx"


def _call(fn: Callable, args: tuple, fresh_process: bool):
    if not fresh_process:
        return fn(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def run_benchmark(
    model: str | os.PathLike | None,
    dataset: SquadDataset,
    systems: Sequence[str] | None = None,
    threads: int | None = None,
    max_answer_len: int = 30,
    warmup: int = 4,
    f1_tolerance: float = 1.0,
    cache_dir: str | os.PathLike | None = None,
    fresh_process: bool = True,
    progress: Callable[[dict], None] | None = None,
    data_label: str = "SQuAD",
    device: str = "cpu",
) -> dict:
    """Measure every system on the questions of `dataset`; returns the results as a JSON-ready dict.

    `model` is a checkpoint directory or hub id (None: the shipped model); `systems` are names for
    `parse_systems` (None: DEFAULT_SYSTEMS, without the frontier where the model has none). `threads`
    (default: torch's current count) goes to torch, ONNX Runtime's intra-op pool and the tokenizers. Without
    `fresh_process` all systems run in this process: quicker, but their peak RSS is not their own (None).
    `progress(row)` is told each system's row as it finishes. `f1_tolerance` sets the summary's
    "within this many F1 points of full length"; `data_label` names the data in the table. `device` ("cpu",
    "cuda", "cuda:1") is where the project and the transformers pipeline run.
    """
    if not dataset.questions:
        raise ValueError("the benchmark data has no questions")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1 or warmup < 0:
        raise ValueError(f"threads must be >= 1 and warmup >= 0, got {threads} and {warmup}")
    directory = checkpoint.resolve(model)
    frontier = load_frontier(directory)
    on_gpu = check_device(device)
    if systems is None:
        defaults = GPU_DEFAULT_SYSTEMS if on_gpu else DEFAULT_SYSTEMS
        systems = [name for name in defaults if frontier is not None or ":frontier" not in name]
    parsed = parse_systems(systems, frontier)
    if not parsed:
        raise ValueError("no systems to measure")
    if on_gpu:
        for system in parsed:
            if system.kind == "onnxruntime" or system.precision == "int8":
                raise ValueError(f"system {system.name!r} runs on the CPU only; drop it from a --device {device} run")
    check_dependencies(parsed)

    config = checkpoint.load_config(directory)
    max_seq_len, doc_stride = window_defaults(config.max_position_embeddings, None, None)
    options = dict(
        max_answer_len=max_answer_len,
        max_seq_len=max_seq_len,
        doc_stride=doc_stride,
        max_question_len=64,
        handle_impossible_answer=dataset.is_v2,
    )
    questions, contexts = [q.question for q in dataset.questions], [q.context for q in dataset.questions]
    tokenizer = checkpoint.load_tokenizer(directory)
    windows = make_windows(tokenizer, questions, contexts, max_seq_len, doc_stride)
    context_tokens = [len(e.ids) for e in tokenizer.encode_batch(contexts, add_special_tokens=False)]
    result = {
        "model": str(model if model is not None else directory),
        "data": {
            "label": data_label,
            "version": dataset.version,
            "questions": len(questions),
            "windows": len(windows),
            "median_context_tokens": statistics.median(context_tokens),
        },
        "options": options,
        "threads": threads,
        "device": device,
        "warmup_questions": warmup,
        "fresh_process_per_system": fresh_process,
        "machine": machine(device),
        "versions": versions(),
        "rows": [],
    }

    onnx_dir = None
    if any(s.kind == "onnxruntime" for s in parsed):
        started = time.perf_counter()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        onnx_dir = _call(onnx_export, (directory, cache), fresh_process)
        result["onnx_export"] = {"path": str(onnx_dir), "seconds": round(time.perf_counter() - started, 2)}

    work = Workload(directory, questions, contexts, options, threads, warmup, onnx_dir, device)
    for system in parsed:
        measured = _call(_measure_alone if fresh_process else measure, (system, work), fresh_process)
        predictions = dict(zip((q.id for q in dataset.questions), measured["answers"], strict=True))
        metrics = score_predictions(dataset, predictions)
        latencies = measured["latencies_ms"]
        row = {
            "system": system.name,
            "kind": system.kind,
            "precision": system.precision,
            "length_config": "full" if system.length_config is None else str(system.length_config),
            "frontier_point": system.point,
            "batch_size": system.batch_size,
            "f1": round(metrics["f1"], 2),
            "em": round(metrics.get("exact_match", metrics.get("exact")), 2),
            "questions_per_second": round(len(questions) / measured["seconds"], 2),
            "seconds": round(measured["seconds"], 3),
            "p50_ms": None if latencies is None else round(float(np.percentile(latencies, 50)), 2),
            "p90_ms": None if latencies is None else round(float(np.percentile(latencies, 90)), 2),
            "peak_rss_mib": round(measured["peak_rss_mib"], 1) if fresh_process else None,
            "peak_gpu_mib": None if measured["peak_gpu_mib"] is None else round(measured["peak_gpu_mib"], 1),
            "build_seconds": round(measured["build_seconds"], 2),
        }
        result["rows"].append(row)
        if progress is not None:
            progress(row)

    best_pipeline = max(
        (r["questions_per_second"] for r in result["rows"] if r["kind"] == "transformers"), default=None
    )
    for row in result["rows"]:
        row["ratio_to_transformers"] = (
            None if best_pipeline is None else round(row["questions_per_second"] / best_pipeline, 2)
        )
    result["summary"] = summary(result["rows"], f1_tolerance)
    return result


def summary(rows: list[dict], f1_tolerance: float = 1.0) -> dict:
    """The headline: the fastest project system within `f1_tolerance` F1 of full length (fp32, else bf16)
    against the fastest transformers pipeline, and single-question p50 latencies."""
    out: dict = {"f1_tolerance": f1_tolerance}
    # the reference: the project at full length, in fp32 where it ran (on a GPU it may run in bf16 only)
    full = sorted(
        (r for r in rows if r["kind"] == "project" and r["length_config"] == "full" and r["precision"] != "int8"),
        key=lambda r: r["precision"] != "fp32",
    )
    if full:
        out["full_length_f1"] = full[0]["f1"]
        within = [r for r in rows if r["kind"] == "project" and r["f1"] >= full[0]["f1"] - f1_tolerance]
        best = max(within, key=lambda r: r["questions_per_second"])
        out["best_within_tolerance"] = {k: best[k] for k in ("system", "length_config", "f1", "questions_per_second")}
    pipelines = [r for r in rows if r["kind"] == "transformers"]
    if pipelines:
        fastest = max(pipelines, key=lambda r: r["questions_per_second"])
        out["best_transformers"] = {k: fastest[k] for k in ("system", "f1", "questions_per_second")}
    if full and pipelines:
        ratio = out["best_within_tolerance"]["questions_per_second"] / out["best_transformers"]["questions_per_second"]
        out["speedup"] = round(ratio, 2)
    out["p50_ms_batch_1"] = {r["system"]: r["p50_ms"] for r in rows if r["p50_ms"] is not None}
    return out


def check_device(device: str) -> bool:
    """Whether `device` is a GPU; a one-line error for a device this torch cannot use."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (cuda:N for one of several GPUs), got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch sees no CUDA GPU")
    return kind == "cuda"


def machine(device: str = "cpu") -> dict:
    found = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


def versions() -> dict:
    """Versions of every package a system may use (None: not installed)."""
    found = {}
    for package in ("torch", "tokenizers", "transformers", "optimum", "optimum-onnx", "onnxruntime"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def markdown(result: dict) -> str:
    """The results as a markdown table, with the headline beneath it."""
    data, options = result["data"], result["options"]
    installed = ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)
    on_gpu = "gpu" in result["machine"]
    gpu = f"On {result['machine']['gpu']} ({result['device']}); " if on_gpu else ""
    lines = [
        f"# Question answering speed: {result['model']}",
        "",
        f"{data['questions']} questions of {data['label']} ({data['windows']} windows, median context "
        f"{data['median_context_tokens']:g} tokens), end to end: tokenisation, model and decoding. "
        f"{gpu}{result['threads']} CPU thread(s) on {result['machine']['cpu']} "
        f"({result['machine']['cpu_capability']}); max_answer_len {options['max_answer_len']}, max_seq_len "
        f"{options['max_seq_len']}, doc_stride {options['doc_stride']}. Build time (loading, ONNX session) is not "
        f"counted. {installed}.",
        "",
        "| system | precision | length config | batch | F1 | EM | questions/s | × transformers "
        f"| p50 ms | p90 ms | peak RSS MiB |{' peak GPU MiB |' if on_gpu else ''} build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else "") + "---|",
    ]
    dash = lambda value, spec="": "-" if value is None else format(value, spec)  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {KINDS[r['kind']]} | {r['precision']} | {r['length_config']} | {r['batch_size']} | {r['f1']:.2f} "
            f"| {r['em']:.2f} | {r['questions_per_second']:.1f} | {dash(r['ratio_to_transformers'], '.2f')} "
            f"| {dash(r['p50_ms'], '.1f')} | {dash(r['p90_ms'], '.1f')} | {dash(r['peak_rss_mib'], '.0f')} "
            + (f"| {dash(r['peak_gpu_mib'], '.0f')} " if on_gpu else "")
            + f"| {r['build_seconds']:.1f} |"
        )
    s = result["summary"]
    if "speedup" in s:
        best, pipeline = s["best_within_tolerance"], s["best_transformers"]
        lines += [
            "",
            f"Fastest project system within {s['f1_tolerance']:g} F1 of full length ({s['full_length_f1']:.2f}): "
            f"`{best['system']}` ({best['length_config']}), F1 {best['f1']:.2f} at {best['questions_per_second']:.1f} "
            f"questions/s, **{s['speedup']:.2f}x** the fastest transformers pipeline (`{pipeline['system']}`, "
            f"{pipeline['questions_per_second']:.1f} questions/s).",
        ]
    if s["p50_ms_batch_1"]:
        latencies = ", ".join(f"`{name}` {ms:.1f}" for name, ms in s["p50_ms_batch_1"].items())
        lines += ["", f"Single question (batch 1), p50 ms: {latencies}."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str | os.PathLike) -> None:
    """F1 against questions/s, one marker per system (colour: kind; filled: batch > 1); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    colours = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:green")))
    for kind, label in KINDS.items():
        for batched in (False, True):
            rows = [r for r in result["rows"] if r["kind"] == kind and (r["batch_size"] > 1) == batched]
            if rows:
                axes.scatter(
                    [r["questions_per_second"] for r in rows],
                    [r["f1"] for r in rows],
                    color=colours[kind],
                    facecolors=colours[kind] if batched else "none",
                    label=f"{label}, {'batched' if batched else 'batch 1'}",
                )
    for r in result["rows"]:
        axes.annotate(
            r["system"],
            (r["questions_per_second"], r["f1"]),
            fontsize=6,
            alpha=0.7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axes.set_xscale("log")
    axes.set_xlabel(f"questions/s, end to end ({result['threads']} thread(s))")
    axes.set_ylabel(f"F1 ({result['data']['questions']} SQuAD questions)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda tmp: figure.savefig(tmp, format=suffix))
    plt.close(figure)


def write_results(result: dict, output: str | os.PathLike) -> list[Path]:
    """OUTPUT.md, OUTPUT.json and OUTPUT.png, each written atomically; returns their paths."""
    paths = write_report(output, markdown(result), result)
    image = paths[0].with_suffix(".png")
    plot(result, image)
    return [*paths, image]
