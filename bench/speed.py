"""Questions/s, F1, latency and peak RSS of this project beside the transformers pipeline and ONNX Runtime.

The same weights and the same SQuAD questions for every system, timed end to end (tokenisation, model,
decoding), each system in its own process; see `dynamic_tinybert.benchmark`. Prints a markdown table and
writes OUTPUT.md, OUTPUT.json and OUTPUT.png (F1 against questions/s). Needs the bench extra for the
transformers and onnxruntime systems: pip install -c constraints.txt -e ".[bench]"

    python bench/speed.py --model M --limit 500 --threads 1
    python bench/speed.py --model M --systems project@32,project:frontier@32,transformers@32 --limit 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dynamic_tinybert.benchmark import DEFAULT_SYSTEMS, markdown, run_benchmark, write_results
from dynamic_tinybert.squad import load_squad

SQUAD_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.gz"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint directory or hub id (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=SQUAD_DEV, help="SQuAD file (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=500, help="only the first N questions (default 500)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every system (default 1)")
    parser.add_argument(
        "--systems",
        type=lambda text: [name for name in text.split(",") if name.strip()],
        help=f"comma-separated KIND[:OPTION...][@BATCH] (default: {','.join(DEFAULT_SYSTEMS)})",
    )
    parser.add_argument("--max-answer-len", type=int, default=30, help="longest answer in tokens, for every system")
    parser.add_argument("--output", type=Path, default=Path("bench/results/speed"), help="writes OUTPUT.md/.json/.png")
    args = parser.parse_args(argv)
    dataset = load_squad(args.data, limit=args.limit)
    result = run_benchmark(
        args.model,
        dataset,
        systems=args.systems,
        threads=args.threads,
        max_answer_len=args.max_answer_len,
        progress=lambda row: print(json.dumps(row), file=sys.stderr, flush=True),
        data_label=args.data.name,
    )
    print(markdown(result))
    for path in write_results(result, args.output):
        print(f"written to {path}")


if __name__ == "__main__":
    main()
