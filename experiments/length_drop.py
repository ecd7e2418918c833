"""Does LengthDrop training help or hurt token dropping? A controlled comparison from one start model.

Every variant starts from the same model and trains for the same steps on the same windows in the same
order; only the objective differs. Each is then scored on the same dev questions at full length and under
fixed dropping configurations, beside the untrained start model:

- `start`: no training (the reference every variant is measured against);
- `span`: the span loss alone (continued fine-tuning: what any further training does to dropping);
- `lengthdrop`: LengthDrop as `dtb train finetune --length-drop` runs it (sandwich of the smallest and 2
  random sub-models, LayerDrop 0.2, inplace distillation);
- `lengthdrop-nolayerdrop`: the same without LayerDrop;
- `lengthdrop-smallest`: only the smallest sub-model beside the full one (no random ones, no LayerDrop).

Runs on a GPU when there is one (bf16 autocast), else on the CPU (fp32). Writes a markdown table and JSON.

    python experiments/length_drop.py --model M --data train-v2.0.json.gz --eval-data dev-v1.1.json.gz \
        --train-questions 20000 --steps 600 --output docs/experiments/results/length-drop
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from dynamic_tinybert import checkpoint, training
from dynamic_tinybert.benchmark import results
from dynamic_tinybert.features import window_defaults
from dynamic_tinybert.frontier import load_frontier
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad
from dynamic_tinybert.training.data import training_data

WARMUP_RATIO = 0.05  # as the LengthDrop run in the model card
VARIANTS = {
    "start": None,
    "span": dict(),
    "lengthdrop": dict(num_sandwich=2, layer_drop=0.2),
    "lengthdrop-nolayerdrop": dict(num_sandwich=2, layer_drop=0.0),
    "lengthdrop-smallest": dict(num_sandwich=0, layer_drop=0.0),
}


def objective_for(variant: str, seed: int) -> training.Objective:
    settings = VARIANTS[variant]
    if not settings:
        return training.SpanLoss()
    return training.LengthDrop(training.SpanLoss(), ratio_bound=0.2, seed=seed, **settings)


def main() -> None:
    parser = results.script_parser(__doc__)
    parser.add_argument("--model", type=Path, help="start model (default: the shipped one)")
    parser.add_argument("--data", type=Path, required=True, help="SQuAD training file (answerable questions used)")
    parser.add_argument("--eval-data", type=Path, required=True, help="SQuAD dev file")
    parser.add_argument("--train-questions", type=int, default=20000, help="the first N training questions")
    parser.add_argument("--eval-questions", type=int, default=2000, help="the first N dev questions")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-best", type=Path, help="write the trained variant best at 'slope 0.9-0.4' here (fp16)")
    results.add_run_args(parser)
    args = results.parse_args(parser)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    directory = checkpoint.resolve(args.model)
    tokenizer = checkpoint.load_tokenizer(directory)
    config = checkpoint.load_config(directory)
    max_seq_len, doc_stride = window_defaults(config.max_position_embeddings, None, None)
    windows = training.WindowSettings(max_seq_len, doc_stride)
    features, _ = training_data(tokenizer, args.data, windows, answerable_only=True, limit=args.train_questions)
    dev = load_squad(args.eval_data, limit=args.eval_questions)
    configs = results.dropping_configs(config.num_hidden_layers, load_frontier(directory))
    result = {
        "start_model": str(args.model or directory),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "train": {
            "questions": args.train_questions,
            "windows_available": len(features),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "windows_trained": args.steps * args.batch_size,
            "lr": args.lr,
            "warmup_ratio": WARMUP_RATIO,
            "seed": args.seed,
        },
        "eval": {"data": args.eval_data.name, "questions": len(dev.questions)},
        "configs": {name: "full" if config is None else str(config) for name, config in configs.items()},
        "variants": {},
    }
    best = None
    for variant in variants:
        model = checkpoint.load_model(directory)
        entry: dict = {}
        if VARIANTS[variant] is not None:
            with tempfile.TemporaryDirectory() as run_dir:
                settings = training.TrainSettings(
                    output_dir=Path(run_dir),
                    epochs=1,
                    max_steps=args.steps,
                    batch_size=args.batch_size,
                    learning_rate=args.lr,
                    warmup_ratio=WARMUP_RATIO,
                    seed=args.seed,
                    save_every=10**9,
                    log_every=max(1, args.steps // 10),
                )
                started = time.perf_counter()
                training.train(model, tokenizer, objective_for(variant, args.seed), features, settings)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                entry["train_seconds"] = round(time.perf_counter() - started, 1)
                log = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
                entry["loss"] = [round(e["loss"], 4) for e in log if "loss" in e]
        model.to(device)
        entry["scores"] = results.score_configs(model, tokenizer, dev, configs, batch_size=64)
        result["variants"][variant] = entry
        print(variant, json.dumps(entry), flush=True)
        # after each variant: a cut-short run keeps its rows
        results.write_result(args.output, markdown(result), result, directory, device.type)
        dropping = entry["scores"]["slope 0.9-0.4"]["f1"]
        if VARIANTS[variant] is not None and (best is None or dropping > best[0]):
            best = (dropping, variant, model.cpu())
    if args.save_best is not None and best is not None:
        checkpoint.save_checkpoint(best[2], tokenizer, args.save_best, dtype=torch.float16)
        result["saved"] = {"variant": best[1], "path": str(args.save_best)}
        results.write_result(args.output, markdown(result), result, directory, device.type)


def markdown(result: dict) -> str:
    train = result["train"]
    names = list(result["configs"])
    lines = [
        "# LengthDrop against plain training: token dropping from one start model",
        "",
        f"Start model `{result['start_model']}`; every variant trains {train['steps']} steps of {train['batch_size']} "
        f"windows ({train['windows_trained']:,} windows from the first {train['questions']:,} answerable training "
        f"questions, same order), lr {train['lr']:g}, warm-up {train['warmup_ratio']:g}, seed {train['seed']}, on "
        f"{result['device']}. F1 on the first {result['eval']['questions']:,} questions of {result['eval']['data']}; "
        "MACs ratio against full length at real length.",
        "",
        "| variant | train s | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    first = next(iter(result["variants"].values()))["scores"]
    lines.append("| (MACs ratio) | | " + " | ".join(f"{first[n]['macs_ratio']:.3f}" for n in names) + " |")
    for variant, entry in result["variants"].items():
        cells = " | ".join(f"{entry['scores'][n]['f1']:.2f}" for n in names)
        lines.append(f"| {variant} | {entry.get('train_seconds', '-')} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
