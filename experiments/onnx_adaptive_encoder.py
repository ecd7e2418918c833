"""Can the length-adaptive model itself run on ONNX Runtime, with the keep counts as inputs, and is it faster?

Issue 26 asks whether the token-dropping encoder could run on a peer's engine, so that one compiled model
serves every frontier point. This exports the shipped model for one window at a time with the library's
`onnx_export.export` (which began here): its inputs are the token ids, the token types, the number of tokens
each layer keeps and whether question tokens are protected, and the graph selects, gathers and restores the
tokens itself with the eager model's own functions. It checks the logits against the eager model under each
configuration, quantises the export as ONNX Runtime's dynamic int8 (per channel, as the `onnxruntime:int8` peer is; and
again with the feed-forward output projections left in fp32), and
times one window at a time on the same dev windows: eager fp32 and bf16, the export in fp32 and in int8,
each over all the windows before the next (ONNX Runtime's and OpenMP's threads keep spinning after a call,
which slows whatever runs next), with the F1 of each one's answers.

    python experiments/onnx_adaptive_encoder.py --threads 2 --output docs/experiments/results/onnx-adaptive-encoder
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.features import collate
from dynamic_tinybert.onnx_export import export, window_feed
from dynamic_tinybert.squad import f1_score, load_squad


def main() -> None:
    parser = script_parser(__doc__)
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--questions", type=int, default=300, help="dev questions (spread over the file)")
    add_run_args(parser, threads=2)
    args = parse_args(parser)
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.set_num_threads(args.threads)
    qa = QuestionAnswerer.from_pretrained()
    bf16 = QuestionAnswerer.from_pretrained(precision="bf16")
    questions = load_squad(args.data).questions[:: max(1, 10570 // args.questions)][: args.questions]
    windows = qa.windows([q.question for q in questions], [q.context for q in questions])
    points = qa.frontier.points
    configs = {"full": None, **{f"{p.macs_ratio:.3f}": p.length_config for p in (points[-3], points[-2], points[3])}}
    layers = qa.model.config.num_hidden_layers
    folder = Path(tempfile.mkdtemp())
    fp32_path, int8_path = folder / "adaptive.onnx", folder / "adaptive-int8.onnx"
    mixed_path = folder / "adaptive-int8-ff-out-fp32.onnx"
    started = time.perf_counter()
    fp32_path.write_bytes(export(qa.model))
    quantize_dynamic(fp32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)
    build_s = time.perf_counter() - started
    # the feed-forward output projections carry most of int8's loss (docs/experiments/int8-layers.md)
    ff_out = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.name.startswith("/output/dense")]
    quantize_dynamic(fp32_path, mixed_path, per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=ff_out)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (
            ("onnx fp32", fp32_path),
            ("onnx int8", int8_path),
            ("onnx int8, FF out fp32", mixed_path),
        )
    }

    def feeds(window, config):
        batch = collate([window], qa.pad_id)
        return batch, window_feed(batch.input_ids[0], batch.token_type_ids[0], config, layers)

    opts = qa.options()
    contexts = [q.context for q in questions]
    rows = []
    for name, config in configs.items():
        systems = ("eager fp32", "eager bf16", *sessions)
        times: dict[str, list[float]] = {system: [] for system in systems}
        logits: dict[str, list[np.ndarray]] = {system: [] for system in systems}
        inputs = [feeds(window, config) for window in windows]
        for system in systems:  # each over every window in turn: one engine's spinning threads must not slow another's
            for batch, feed in inputs:
                started = time.perf_counter()
                if system.startswith("eager"):
                    model = qa.model if system == "eager fp32" else bf16.model
                    with torch.inference_mode():
                        out = model(batch.input_ids, batch.attention_mask, batch.token_type_ids, length_config=config)
                    both = torch.stack([out.start_logits[0], out.end_logits[0]]).float().numpy()
                else:
                    both = sessions[system].run(None, feed)[0]
                times[system].append(time.perf_counter() - started)
                logits[system].append(both)
        for system in systems:
            answers = qa.decode(windows, contexts, [x[0] for x in logits[system]], [x[1] for x in logits[system]], opts)
            f1 = [max(f1_score(a[0]["answer"] if a else "", g) for g in q.answers) for a, q in zip(answers, questions)]
            diff = [float(np.abs(x - r).max()) for x, r in zip(logits[system], logits["eager fp32"])]
            rows.append(
                {
                    "length_config": name if config is None else f"{name} ({config})",
                    "system": system,
                    "p50_ms": round(1000 * statistics.median(times[system][10:]), 2),
                    "mean_ms": round(1000 * statistics.fmean(times[system][10:]), 2),
                    "f1": round(100 * statistics.fmean(f1), 2),
                    "max_logit_diff": round(max(diff), 5),
                    "median_logit_diff": round(statistics.median(diff), 6),
                }
            )
            print(rows[-1], flush=True)
    lines = [
        "# The length-adaptive model exported to ONNX (keep counts as inputs) against the eager path",
        "",
        f"{len(questions)} dev questions ({len(windows)} windows) one at a time, each system over all of them in turn "
        f"(the first 10 of each configuration not timed); {args.threads} threads; export and quantisation "
        f"{build_s:.1f} s. Logit differences are against eager fp32 on the same window.",
        "",
        "| length config | system | p50 ms | mean ms | F1 | max logit diff | median logit diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length_config']} | {r['system']} | {r['p50_ms']} | {r['mean_ms']} | {r['f1']} "
            f"| {r['max_logit_diff']} | {r['median_logit_diff']} |"
        )
    data = {"rows": rows, "questions": len(questions), "windows": len(windows)}
    show_result(args.output, "\n".join(lines) + "\n", data, checkpoint.resolve(None))


if __name__ == "__main__":
    main()
