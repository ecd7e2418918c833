"""Does torch.compile (inductor, with weight freezing) make the length-adaptive model faster on this CPU?

Issue 26 asks which fused execution to use, chosen by measurement. This times the project's eager path
(`with_precision`: oneDNN-packed bf16 Linear layers, the fused attention kernel) against the same model
compiled by inductor (`dynamic=True`, `freezing` so that it packs the weights itself; in bf16 the whole model
is cast to bf16), on the same dev windows: one window at a time (p50 ms) and batches of 32 sorted by length
(windows/s), at full length and under a frontier point. It checks that the compiled model gives the eager
model's logits and prints the compile time, which a server would pay at start.

    python experiments/compiled_encoder.py --threads 2 --output docs/experiments/results/compiled-encoder
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.features import batches
from dynamic_tinybert.precision import with_precision
from dynamic_tinybert.squad import load_squad


def compiled(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant weights: inductor folds and packs them for oneDNN
    model = copy.deepcopy(model).eval()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return torch.compile(model, dynamic=True)


def run(model, batch, length_config):
    out = model(batch.input_ids, batch.attention_mask, batch.token_type_ids, length_config=length_config)
    return torch.stack([out.start_logits, out.end_logits]).float()


def timed(model, windows, pad_id, length_config, batch_size) -> tuple[float, list[float]]:
    """Seconds in all and per batch, over every window once."""
    per_batch = []
    with torch.inference_mode():
        for batch in batches(windows, batch_size, pad_id):
            started = time.perf_counter()
            run(model, batch, length_config)
            per_batch.append(time.perf_counter() - started)
    return sum(per_batch), per_batch


def main() -> None:
    parser = script_parser(__doc__)
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--single", type=int, default=100, help="windows timed one at a time")
    parser.add_argument("--batched", type=int, default=512, help="windows timed in batches of 32")
    add_run_args(parser, threads=2)
    args = parse_args(parser)
    torch.set_num_threads(args.threads)
    qa = QuestionAnswerer.from_pretrained()
    questions = load_squad(args.data).questions[:: max(1, 10570 // args.batched)][: args.batched]
    windows = qa.windows([q.question for q in questions], [q.context for q in questions])
    point = qa.frontier.points[len(qa.frontier.points) // 2].length_config if qa.frontier else None
    rows = []
    for precision in ("fp32", "bf16"):
        eager = with_precision(qa.model, precision)
        started = time.perf_counter()
        fused = compiled(qa.model, precision)
        for config in (None, point):  # compile (and recompile) on a few shapes before timing
            with torch.inference_mode():
                for batch in batches(windows[:64], 32, qa.pad_id):
                    run(fused, batch, config)
                for batch in batches(windows[:8], 1, qa.pad_id):
                    run(fused, batch, config)
        compile_s = time.perf_counter() - started
        with torch.inference_mode():
            check = next(iter(batches(windows[:32], 32, qa.pad_id)))
            diff = {str(c): float((run(eager, check, c) - run(fused, check, c)).abs().max()) for c in (None, point)}
        for config in (None, point):
            for system, model in (("eager", eager), ("inductor", fused)):
                timed(model, windows[:16], qa.pad_id, config, 1)  # warm
                _, single = timed(model, windows[: args.single], qa.pad_id, config, 1)
                seconds, _ = timed(model, windows, qa.pad_id, config, 32)
                rows.append(
                    {
                        "precision": precision,
                        "length_config": "full" if config is None else str(config),
                        "system": system,
                        "p50_ms_batch1": round(1000 * statistics.median(single), 2),
                        "windows_per_s_batch32": round(len(windows) / seconds, 1),
                        "max_logit_diff": None if system == "eager" else round(diff[str(config)], 5),
                        "compile_s": None if system == "eager" else round(compile_s, 1),
                    }
                )
                print(rows[-1], flush=True)
    lines = [
        "# The encoder compiled by inductor against the eager path",
        "",
        f"{len(windows)} windows of dev questions; batch 1 over the first {args.single}; {args.threads} threads.",
        "",
        "| precision | length config | system | p50 ms, batch 1 | windows/s, batch 32 | max logit diff | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['precision']} | {r['length_config']} | {r['system']} | {r['p50_ms_batch1']} "
            f"| {r['windows_per_s_batch32']} | {r['max_logit_diff'] or '-'} | {r['compile_s'] or '-'} |"
        )
    show_result(args.output, "\n".join(lines) + "\n", {"rows": rows, "windows": len(windows)}, checkpoint.resolve(None))


if __name__ == "__main__":
    main()
