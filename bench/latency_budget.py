"""Do latency budgets hold? Calibrate the frontier on some questions, then time each point on others.

`dynamic_tinybert.latency.calibrate` measures every frontier point's milliseconds per question on this machine and
how they grow per token; a `latency_ms` budget then picks the most accurate point predicted to fit at the
request's length. This script calibrates on `--calibrate` dev questions spread over the file (as `dtb
calibrate` samples), then measures every frontier point (and the full model) on `--questions` other ones
spread the same way (other texts, other lengths) and reports how far the prediction at their length was off.
Prints a table and writes JSON.

    python bench/latency_budget.py --model M --precision bf16 --threads 2 --output bench/results/latency-budget
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import (
    add_data_arg,
    add_run_args,
    parse_args,
    script_parser,
    show_result,
    texts,
)
from dynamic_tinybert.latency import calibrate, evenly_spaced, measure_latencies
from dynamic_tinybert.precision import PRECISIONS
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad


def measure(
    model: str | None, data: Path, precision: str, batch_size: int, calibrate_on: int, questions: int, repeats: int
) -> dict:
    qa = QuestionAnswerer.from_pretrained(model, precision=precision, max_answer_len=30)
    every = load_squad(data).questions
    calibration = evenly_spaced(every, calibrate_on)  # spread over the file: many articles, many lengths
    chosen = {q.id for q in calibration}
    held_out = evenly_spaced([q for q in every if q.id not in chosen], questions)
    frontier = calibrate(qa, *texts(calibration), batch_size, repeats)
    points = [*frontier.points, frontier.full]
    measured = measure_latencies(qa, *texts(held_out), [p.length_config for p in points], batch_size, repeats)
    rows = []
    for point, latency in zip(points, measured):
        predicted = point.latency_at(latency.tokens)  # at the held-out questions' own length
        rows.append(
            {
                "length_config": str(point.length_config),
                "macs_ratio": round(point.macs_ratio, 4),
                "calibrated_ms": round(point.latency_ms, 3),
                "ms_per_token": round(point.latency.ms_per_token, 5),
                "predicted_ms": round(predicted, 3),
                "measured_ms": round(latency.ms, 3),
                "error": round(latency.ms / predicted - 1, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "model": model or "shipped",
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads, {precision}",
        "batch_size": batch_size,
        "repeats": repeats,
        "calibrated_on": f"{data.name}: {calibrate_on} questions spread evenly over the file, "
        f"{frontier.full.latency.tokens:.1f} tokens/question",
        "measured_on": f"{data.name}: {questions} other questions spread evenly over it, "
        f"{measured[-1].tokens:.1f} tokens/question",
        "rows": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Latency budgets: predicted (calibrated) against measured, {result['model']}",
        "",
        f"{result['machine']}, batch size {result['batch_size']}, median of {result['repeats']} repeats; "
        f"calibrated on {result['calibrated_on']}; measured on {result['measured_on']}. Predicted: the "
        f"calibrated line at the measured questions' length. Largest error: {result['max_abs_error']:.1%}.",
        "",
        "| length config | MACs ratio | calibrated ms | ms per token | predicted ms | measured ms | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['length_config']} | {r['macs_ratio']:.3f} | {r['calibrated_ms']:.2f} | {r['ms_per_token']:.4f} "
            f"| {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | {r['error']:+.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="checkpoint with a pareto.json (default: the shipped model)")
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibrate", type=int, default=50, help="questions the calibration measures")
    parser.add_argument("--questions", type=int, default=100, help="other questions each point is then timed on")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; each question keeps its median")
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    keep_freed_memory()  # one long batch job, as `dtb calibrate` runs it
    directory = checkpoint.resolve(args.model)
    result = measure(
        args.model, args.data, args.precision, args.batch_size, args.calibrate, args.questions, args.repeats
    )
    show_result(args.output, markdown(result), result, directory)


if __name__ == "__main__":
    main()
