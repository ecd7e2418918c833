"""Running the benchmark: every system on the same questions, timed end to end, each in a fresh process.

Each system takes questions and contexts and returns answer texts; it is timed end to end (tokenisation,
model, decoding) with `time.perf_counter`, after an untimed warm-up, and its build (loading, the ONNX
session, compiling the OpenVINO model) is timed apart. Every system is scored with the official SQuAD
metric on the same questions, and runs in a fresh process of its own, so that its peak RSS is its own and
it inherits no warm caches. At batch size 1 each question is its own call, as a service answers single
requests: that run gives p50/p90 latency. The exports the peers run (ONNX, its int8 copy, OpenVINO) are
made once and cached under a hash of the checkpoint's files and the exporting packages' versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint
from ..features import make_windows
from ..frontier import FILENAME as FRONTIER_FILE
from ..frontier import load_frontier
from ..options import AnswerOptions
from ..runtime import check_device, peak_rss_mib
from ..squad import SquadDataset, score_predictions
from .provenance import cpu_flags, provenance
from .systems import (
    CPU_ONLY_KINDS,
    DEFAULT_SYSTEMS,
    GPU_DEFAULT_SYSTEMS,
    Answer,
    System,
    Workload,
    build,
    check_dependencies,
    parse_systems,
)


def measure(system: System, work: Workload) -> dict:
    """Build the system, warm it up, then time it on every question: answers, the precision it ran in, seconds,
    latencies, peak memory.

    Answers are texts, so every call ends with its results back on the host: GPU time is counted in full.
    """
    torch.set_num_threads(work.threads)
    on_gpu = torch.device(work.device).type == "cuda"
    started = time.perf_counter()
    built = build(system, work)
    build_seconds = time.perf_counter() - started
    answer = built.answer
    one_at_a_time = system.batch_size == 1
    warmup = max(work.warmup, system.batch_size)  # every kernel and buffer of a full batch is ready
    _answer_all(answer, work.questions[:warmup], work.contexts[:warmup], one_at_a_time)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(work.device)
    answers, call_seconds = _answer_all(answer, work.questions, work.contexts, one_at_a_time)
    return {
        "answers": answers,
        "precision": built.precision,
        "engine": built.engine,
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


def onnx_export(model_dir: Path, cache_dir: Path) -> Path:
    """The checkpoint exported to ONNX by optimum, once: cached under a hash of its files and the exporters."""
    from optimum.onnxruntime import ORTModelForQuestionAnswering

    def export(folder: Path) -> None:
        with warnings.catch_warnings():  # TracerWarnings on transformers' mask code; tests check the answers
            warnings.simplefilter("ignore")
            ORTModelForQuestionAnswering.from_pretrained(model_dir, export=True).save_pretrained(folder)

    key = _key(_checkpoint_files(model_dir), ("torch", "transformers", "optimum-onnx"))
    return _made_once(Path(cache_dir) / f"onnx-{key}", export)


def onnx_int8(onnx_dir: Path, cache_dir: Path, config: str) -> Path:
    """The ONNX export dynamically quantised to int8 by optimum with the `config` of `int8_config()`, once.

    Dynamic: weights int8 per output channel, activations quantised as each batch arrives, nothing calibrated.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    def quantise(folder: Path) -> None:
        for path in onnx_dir.iterdir():  # config.json beside it, for loading; the model is written quantised
            if path.is_file() and not path.name.startswith("model.onnx"):
                shutil.copy2(path, folder / path.name)
        quantization = getattr(AutoQuantizationConfig, config)(is_static=False, per_channel=True)
        ORTQuantizer.from_pretrained(onnx_dir).quantize(quantization, folder, file_suffix=None)

    key = _key([onnx_dir / "model.onnx"], ("onnxruntime", "optimum-onnx"), config)
    return _made_once(Path(cache_dir) / f"onnx-int8-{config}-{key}", quantise)


def int8_config() -> str:
    """optimum's quantisation config for this CPU: `avx512_vnni` where it has VNNI, else `avx2`."""
    return "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"


def openvino_export(model_dir: Path, cache_dir: Path) -> Path:
    """The checkpoint converted to OpenVINO by optimum-intel (fp32 weights), once: cached like `onnx_export`."""
    from optimum.intel import OVModelForQuestionAnswering

    def export(folder: Path) -> None:
        with warnings.catch_warnings():  # TracerWarnings, as for ONNX
            warnings.simplefilter("ignore")
            model = OVModelForQuestionAnswering.from_pretrained(
                model_dir, export=True, compile=False, load_in_8bit=False
            )
            model.save_pretrained(folder)

    key = _key(_checkpoint_files(model_dir), ("torch", "transformers", "optimum-intel", "openvino"))
    return _made_once(Path(cache_dir) / f"openvino-{key}", export)


def _checkpoint_files(model_dir: Path) -> list[Path]:
    """What an export reads: every file of the checkpoint but its frontier."""
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name != FRONTIER_FILE)


def _key(files: Sequence[Path], packages: Sequence[str], *settings: str) -> str:
    """A hash of the files' names and bytes, the packages' versions and the settings: an export's cache key."""
    key = hashlib.sha256()
    for text in [*(f"{p}=={importlib.metadata.version(p)}" for p in packages), *settings]:
        key.update(text.encode() + b"\0")
    for path in files:
        key.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                key.update(chunk)
    return key.hexdigest()[:24]


def _made_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, written by `write(folder)` unless it exists: into a folder beside it, then moved into place
    whole, so that an interrupted export leaves nothing behind and of two processes the first one wins."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".export-"))
        try:
            write(staging)
            if not target.is_dir():  # another process may have finished the same export first
                os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynamic-tinybert" / "exports"


def _exported(export: Callable[..., Path], args: tuple, fresh_process: bool) -> tuple[Path, dict]:
    """The folder `export(*args)` gives, and what a result records of it: where, and the seconds it took (about
    none when cached)."""
    started = time.perf_counter()
    folder = _call(export, args, fresh_process)
    return folder, {"path": str(folder), "seconds": round(time.perf_counter() - started, 2)}


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
    rounds: int = 1,
) -> dict:
    """Measure every system on the questions of `dataset`; returns the results as a JSON-ready dict.

    `model` is a checkpoint directory or hub id (None: the shipped model); `systems` are names for
    `parse_systems` (None: DEFAULT_SYSTEMS, without the frontier where the model has none). `threads`
    (default: torch's current count) goes to torch, ONNX Runtime's intra-op pool, OpenVINO and the tokenizers.
    `cache_dir` keeps the ONNX and OpenVINO exports (default: `default_cache_dir()`). Without
    `fresh_process` all systems run in this process: quicker, but their peak RSS is not their own (None).
    `progress(row)` is told each system's row as it finishes. `f1_tolerance` sets the summary's
    "within this many F1 points of full length"; `data_label` names the data in the table. `device` ("cpu",
    "cuda", "cuda:1") is where the project and the transformers pipeline run.

    With `rounds` > 1 every system runs that many times, every other round in reverse order, and its row
    gives the median round: a machine whose speed drifts during the run then weighs on every system alike,
    where one slow spell would otherwise land on whichever systems ran in it. `progress` hears every round.
    """
    if not dataset.questions:
        raise ValueError("the benchmark data has no questions")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"threads and rounds must be >= 1 and warmup >= 0, got {threads}, {rounds} and {warmup}")
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
            if system.kind in CPU_ONLY_KINDS or system.precision == "int8":
                raise ValueError(f"system {system.name!r} runs on the CPU only; drop it from a --device {device} run")
    check_dependencies(parsed)

    config = checkpoint.load_config(directory)
    options = AnswerOptions(max_answer_len=max_answer_len, handle_impossible_answer=dataset.is_v2)
    options = options.with_window_defaults(config.max_position_embeddings)  # every system gets them spelt out
    questions, contexts = [q.question for q in dataset.questions], [q.context for q in dataset.questions]
    tokenizer = checkpoint.load_tokenizer(directory)
    windows = make_windows(tokenizer, questions, contexts, options.max_seq_len, options.doc_stride)
    context_tokens = [len(e.ids) for e in tokenizer.encode_batch(contexts, add_special_tokens=False)]
    result = {
        "model": str(model) if model is not None else f"the shipped model ({directory.name})",
        "data": {
            "label": data_label,
            "version": dataset.version,
            "questions": len(questions),
            "windows": len(windows),
            "median_context_tokens": statistics.median(context_tokens),
        },
        "options": options.pipeline_kwargs(),
        "threads": threads,
        "device": device,
        "warmup_questions": warmup,
        "rounds": rounds,
        "fresh_process_per_system": fresh_process,
        **provenance(directory, device),
        "rows": [],
    }

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    onnx_dir = onnx_int8_dir = openvino_dir = None
    if any(s.kind == "onnxruntime" for s in parsed):
        onnx_dir, result["onnx_export"] = _exported(onnx_export, (directory, cache), fresh_process)
    if any(s.kind == "onnxruntime" and s.precision == "int8" for s in parsed):
        config = int8_config()
        onnx_int8_dir, result["onnx_int8"] = _exported(onnx_int8, (onnx_dir, cache, config), fresh_process)
        result["onnx_int8"]["config"] = f"AutoQuantizationConfig.{config}(is_static=False, per_channel=True)"
    if any(s.kind == "openvino" for s in parsed):
        openvino_dir, result["openvino_export"] = _exported(openvino_export, (directory, cache), fresh_process)

    work = Workload(
        directory, questions, contexts, options, threads, warmup, onnx_dir, device, onnx_int8_dir, openvino_dir
    )
    rounds_of: list[list[dict]] = [[] for _ in parsed]
    rows: list[dict] = [{} for _ in parsed]  # each system's row as of its latest round
    for round_index in range(rounds):
        order = range(len(parsed)) if round_index % 2 == 0 else reversed(range(len(parsed)))
        for i in order:
            rounds_of[i].append(_call(_measure_alone if fresh_process else measure, (parsed[i], work), fresh_process))
            rows[i] = _row(parsed[i], rounds_of[i], dataset, fresh_process)
            if progress is not None:
                progress(rows[i])
    result["rows"] = rows

    best_pipeline = max(
        (r["questions_per_second"] for r in result["rows"] if r["kind"] == "transformers"), default=None
    )
    for row in result["rows"]:
        row["ratio_to_transformers"] = (
            None if best_pipeline is None else round(row["questions_per_second"] / best_pipeline, 2)
        )
    result["summary"] = summary(result["rows"], f1_tolerance)
    return result


def _row(system: System, rounds: list[dict], dataset: SquadDataset, fresh_process: bool) -> dict:
    """A system's row from its rounds of `measure`: answers scored from the first, times the median round."""
    first = rounds[0]
    predictions = dict(zip((q.id for q in dataset.questions), first["answers"], strict=True))
    metrics = score_predictions(dataset, predictions)
    seconds = [m["seconds"] for m in rounds]
    latencies = [m["latencies_ms"] for m in rounds if m["latencies_ms"] is not None]  # batch 1 only

    def percentile(q: int) -> float | None:
        return round(statistics.median(float(np.percentile(x, q)) for x in latencies), 2) if latencies else None

    questions = len(dataset.questions)
    return {
        "system": system.name,
        "kind": system.kind,
        "precision": first["precision"],  # as it ran: OpenVINO's default is its own choice
        "engine": first["engine"],
        "length_config": "full" if system.length_config is None else str(system.length_config),
        "frontier_point": system.point,
        "batch_size": system.batch_size,
        "f1": round(metrics["f1"], 2),
        "em": round(metrics.get("exact_match", metrics.get("exact")), 2),
        "questions_per_second": round(questions / statistics.median(seconds), 2),
        "questions_per_second_rounds": [round(questions / s, 2) for s in seconds],
        "seconds": round(statistics.median(seconds), 3),
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "peak_rss_mib": round(max(m["peak_rss_mib"] for m in rounds), 1) if fresh_process else None,
        "peak_gpu_mib": None if first["peak_gpu_mib"] is None else round(max(m["peak_gpu_mib"] for m in rounds), 1),
        "build_seconds": round(statistics.median(m["build_seconds"] for m in rounds), 2),
    }


def summary(rows: list[dict], f1_tolerance: float = 1.0) -> dict:
    """The headline: the fastest project system within `f1_tolerance` F1 of full length (fp32, else bf16)
    against the fastest transformers pipeline and the fastest peer of any kind, and single-question p50
    latencies."""
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
    peers = [r for r in rows if r["kind"] != "project"]
    if full and peers:
        fastest = max(peers, key=lambda r: r["questions_per_second"])
        out["best_peer"] = {k: fastest[k] for k in ("system", "f1", "questions_per_second", "p50_ms")}
        ratio = out["best_within_tolerance"]["questions_per_second"] / fastest["questions_per_second"]
        out["speedup_over_best_peer"] = round(ratio, 2)
    out["p50_ms_batch_1"] = {r["system"]: r["p50_ms"] for r in rows if r["p50_ms"] is not None}
    return out
