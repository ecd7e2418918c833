"""Do latency budgets hold? Calibrate the frontier on some questions, then time each point on others.

`QuestionAnswerer.calibrate` measures every frontier point's milliseconds per question on this machine and
how they grow per token; a `latency_ms` budget then picks the most accurate point predicted to fit at the
request's length. This script calibrates on `--calibrate` dev questions spread over the file (as `dtb
calibrate` samples), then measures every frontier point (and the full model) on `--questions` other ones
spread the same way (other texts, other lengths) and reports how far the prediction at their length was off.
Prints a table and writes JSON.

    python bench/latency_budget.py --model M --precision bf16 --threads 2 --output bench/results/latency-budget
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.fileio import write_report
from dynamic_tinybert.latency import evenly_spaced, measure_latencies
from dynamic_tinybert.precision import PRECISIONS
from dynamic_tinybert.squad import load_squad

SQUAD_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.gz"


def measure(
    model: str | None, data: Path, precision: str, batch_size: int, calibrate: int, questions: int, repeats: int
) -> dict:
    qa = QuestionAnswerer.from_pretrained(model, precision=precision, max_answer_len=30)
    every = load_squad(data).questions
    calibration = evenly_spaced(every, calibrate)  # spread over the file: many articles, many lengths
    chosen = {q.id for q in calibration}
    held_out = evenly_spaced([q for q in every if q.id not in chosen], questions)
    frontier = calibrate(qa, [q.question for q in calibration], [q.context for q in calibration], batch_size, repeats)
    points = [*frontier.points, frontier.full]
    measured = measure_latencies(
        qa,
        [q.question for q in held_out],
        [q.context for q in held_out],
        [p.length_config for p in points],
        batch_size,
        repeats,
    )
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
        "model": str(model),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {precision}",
        "batch_size": batch_size,
        "repeats": repeats,
        "calibrated_on": f"{data.name}: {calibrate} questions spread evenly over the file, "
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint with a pareto.json (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=SQUAD_DEV)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--calibrate", type=int, default=50, help="questions the calibration measures")
    parser.add_argument("--questions", type=int, default=100, help="other questions each point is then timed on")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; each question keeps its median")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="write OUTPUT.md and OUTPUT.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(
        args.model, args.data, args.precision, args.batch_size, args.calibrate, args.questions, args.repeats
    )
    table = markdown(result)
    print(table)
    if args.output is not None:
        write_report(args.output, table, result)


if __name__ == "__main__":
    main()
