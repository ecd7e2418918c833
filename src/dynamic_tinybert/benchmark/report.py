"""The benchmark's result as people read it: a markdown table with its headline, and a plot."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import atomic_write, write_report
from .results import with_provenance
from .systems import KINDS


def markdown(result: dict) -> str:
    """The results as a markdown table, with the headline beneath it and the provenance line beneath the title
    (the result holds `provenance`'s keys at its top level, so the JSON records them once)."""
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
        f"{options['max_seq_len']}, doc_stride {options['doc_stride']}. Build time (loading, ONNX session, OpenVINO "
        f"compilation) is not counted. {installed}.{_int8_note(result)}{_rounds_note(result)}",
        "",
        "| system | precision | length config | batch | F1 | EM | questions/s | × transformers "
        f"| p50 ms | p90 ms | peak RSS MiB |{' peak GPU MiB |' if on_gpu else ''} build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if on_gpu else "") + "---|",
    ]
    dash = lambda value, spec="": "-" if value is None else format(value, spec)  # noqa: E731
    for r in result["rows"]:
        lines.append(
            f"| {_system_label(r)} | {r['precision']} | {r['length_config']} | {r['batch_size']} | {r['f1']:.2f} "
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
    if "speedup_over_best_peer" in s:
        peer = s["best_peer"]
        lines += [
            "",
            f"Against the fastest system of any other kind (`{peer['system']}`, {peer['questions_per_second']:.1f} "
            f"questions/s, F1 {peer['f1']:.2f}): **{s['speedup_over_best_peer']:.2f}x**.",
        ]
    if s["p50_ms_batch_1"]:
        latencies = ", ".join(f"`{name}` {ms:.1f}" for name, ms in s["p50_ms_batch_1"].items())
        lines += ["", f"Single question (batch 1), p50 ms: {latencies}."]
    return with_provenance("\n".join(lines) + "\n", result)


def _system_label(row: dict) -> str:
    """The competitor's name; the project's says which engine ran it where that was not eager torch."""
    engine = row.get("engine")
    return KINDS[row["kind"]] + (f" on {engine}" if engine not in (None, "torch") else "")


def _int8_note(result: dict) -> str:
    """Which of optimum's quantisation configs made the ONNX Runtime int8 model, where one ran."""
    if "onnx_int8" not in result:
        return ""
    return f" ONNX Runtime int8: optimum's dynamic quantisation, `{result['onnx_int8']['config']}`."


def plot(result: dict, path: str | os.PathLike) -> None:
    """F1 against questions/s, one marker per system (colour: kind; filled: batch > 1); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    colours = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))
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


def _rounds_note(result: dict) -> str:
    """How a run of several rounds chose each row's times."""
    rounds = result.get("rounds", 1)
    if rounds == 1:
        return ""
    return (
        f" Every system ran {rounds} times, every other round in reverse order; its times are its median round "
        "(each round's questions/s are in the JSON)."
    )
