"""Which feed-forward output projections can int8 quantise, now that activations get a scale per token?

`precision="int8"` leaves the first layer's feed-forward output projection (1536 -> 384) in bf16 (fp32
where bf16 is emulated) and quantises every other encoder Linear layer. This scores that rule against its
neighbours on the same questions: every output projection quantised, the first one kept (the rule), the
first and last kept, and all six kept; fp32 and bf16 are the references. F1 only: speed is `dtb bench`'s.
Prints a table and writes JSON.

    python experiments/int8_layers.py --limit 1000 --threads 2 --output docs/experiments/results/int8-per-token-layers
"""

from __future__ import annotations

import torch

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.evaluate import evaluate
from dynamic_tinybert.precision import BFloat16Linear, Int8Linear, cpu_has_native_bf16, with_precision
from dynamic_tinybert.squad import load_squad

# The layers whose feed-forward output projection stays in floating point, per variant.
VARIANTS = {"all quantised": (), "first kept (the rule)": (0,), "first and last kept": (0, 5), "all kept": range(6)}


def int8_keeping(model: torch.nn.Module, kept: tuple[int, ...] | range) -> torch.nn.Module:
    """`with_precision(model, "int8")` with exactly the output projections of the layers in `kept` in float."""
    fast = with_precision(model, "int8")
    for i, (layer, source) in enumerate(zip(fast.bert.encoder.layer, model.bert.encoder.layer)):
        dense = source.output.dense
        if i in kept:
            layer.output.dense = BFloat16Linear(dense) if cpu_has_native_bf16() else dense
        else:
            layer.output.dense = Int8Linear(dense)
    return fast


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the shipped model)")
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--limit", type=int, default=1000, help="the first N questions (default 1000)")
    add_run_args(parser)
    args = parse_args(parser)
    directory = checkpoint.resolve(args.model)
    dataset = load_squad(args.data, limit=args.limit)
    qa = QuestionAnswerer.from_pretrained(directory, max_answer_len=30, batch_size=32)
    full = qa.model
    models = {"fp32": full, "bf16": with_precision(full, "bf16")}
    models |= {f"int8, {name}": int8_keeping(full, kept) for name, kept in VARIANTS.items()}
    rows = []
    for name, model in models.items():
        qa.model = model
        f1 = evaluate(qa, dataset).f1
        rows.append({"variant": name, "f1": round(f1, 2), "delta_f1": round(f1 - rows[0]["f1"], 2) if rows else 0.0})
        print(f"{name}: F1 {f1:.2f}", flush=True)
    table = "| variant | F1 | ΔF1 vs fp32 |\n|---|---|---|\n" + "".join(
        f"| {r['variant']} | {r['f1']:.2f} | {r['delta_f1']:+.2f} |\n" for r in rows
    )
    show_result(args.output, table, {"questions": len(dataset.questions), "rows": rows}, directory)


if __name__ == "__main__":
    main()
