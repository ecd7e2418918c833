"""`dtb bench`: the project beside the transformers pipeline, ONNX Runtime and OpenVINO, same questions and weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import benchmark, checkpoint
from ..squad import load_squad
from .common import UsageError, add_device_arg, add_model_args, positive_int, required_model


def add_parsers(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="questions/s, F1, latency and peak memory beside the transformers pipeline, ONNX Runtime and OpenVINO",
    )
    add_model_args(bench)
    bench.add_argument("--data", type=Path, required=True, help="SQuAD file; every system answers the same questions")
    bench.add_argument("--limit", type=positive_int, default=500, help="only the first N questions (default 500)")
    bench.add_argument(
        "--systems",
        type=lambda text: [name for name in text.split(",") if name.strip()],
        help="comma-separated KIND[:OPTION...][@BATCH], e.g. project:frontier@32,project:int8@1,transformers@32 "
        "(default: full length, every frontier point, bf16, int8 on torch and on ONNX Runtime (every frontier point "
        "too), the pipeline, ONNX Runtime and OpenVINO at batch 1 and 32, ONNX Runtime int8 at 1 and 32, OpenVINO "
        "also at 8 and in fp32 at 1)",
    )
    bench.add_argument(
        "--max-answer-len", type=positive_int, default=30, help="longest answer in tokens, for every system"
    )
    add_device_arg(
        bench, help="cpu, or cuda: the project and the pipeline on the GPU (default systems there: bf16, batch 1, 256)"
    )
    bench.add_argument(
        "--rounds",
        type=positive_int,
        default=1,
        help="run every system N times, every other round in reverse order, and report its median round: "
        "a machine whose speed drifts then slows every system alike (default 1)",
    )
    bench.add_argument("--output", type=Path, help="also write OUTPUT.md, OUTPUT.json and OUTPUT.png")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    bench.set_defaults(run=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    directory = checkpoint.resolve(required_model(args), args.revision)
    dataset = load_squad(args.data, limit=args.limit)

    def report(row: dict) -> None:
        print(f"{row['system']}: F1 {row['f1']:.2f}, {row['questions_per_second']:.1f} questions/s", file=sys.stderr)

    try:
        result = benchmark.run_benchmark(
            directory if args.model else None,  # None: named as the shipped model, not by its path
            dataset,
            systems=args.systems,
            threads=args.threads,
            max_answer_len=args.max_answer_len,
            progress=report,
            data_label=args.data.name,
            device=args.device,
            rounds=args.rounds,
        )
    except ImportError as e:  # a competitor's packages are missing: the message names the extra
        raise UsageError(f"dtb bench: {e}") from None
    sys.stdout.write(json.dumps(result, indent=1) + "\n" if args.json else benchmark.markdown(result))
    if args.output is not None:
        for path in benchmark.write_results(result, args.output):
            print(f"written to {path}", file=sys.stderr)
    return 0
