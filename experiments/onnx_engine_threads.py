"""How should the onnxruntime engine spend its threads on many windows: split each call across all of them, or run
windows side by side on one thread each?

The exported graph (`onnx_export.py`) has a few large matmuls and hundreds of small operators (shapes,
gathers, the selection's TopKs). Split across threads, each small operator leaves all but one thread
waiting. This times the shipped model's int8 graph over the same dev windows, one window per call: one
session on every thread, one after another; the same without spinning threads; one single-thread session
called from as many Python threads as there are threads; and one thread alone.

    python experiments/onnx_engine_threads.py --threads 2 --questions 200 \
        --output docs/experiments/results/onnx-engine-threads
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.features import collate
from dynamic_tinybert.onnx_export import export, quantize_int8, window_feed
from dynamic_tinybert.squad import load_squad


def main() -> None:
    parser = script_parser(__doc__)
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--questions", type=int, default=200, help="the first N dev questions")
    add_run_args(parser, threads=2)
    args = parse_args(parser)
    import onnxruntime

    torch.set_num_threads(args.threads)
    qa = QuestionAnswerer.from_pretrained()
    questions = load_squad(args.data).questions[: args.questions]
    windows = qa.windows([q.question for q in questions], [q.context for q in questions])
    graph = quantize_int8(export(qa.model))

    def session(threads: int, spinning: bool = True):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    ways = [
        (f"{args.threads} threads per call, one call after another", args.threads, 1, True),
        (f"{args.threads} threads per call, no spinning", args.threads, 1, False),
        (f"1 thread per call, {args.threads} calls side by side", 1, args.threads, True),
        ("1 thread, one call after another", 1, 1, True),
    ]
    rows = []
    layers = qa.model.config.num_hidden_layers
    for name, config in (("full", None), ("frontier 5", qa.frontier.points[5].length_config)):
        feeds = []
        for window in windows:
            batch = collate([window])
            feeds.append(window_feed(batch.input_ids[0], batch.token_type_ids[0], config, layers))
        for way, threads, workers, spinning in ways:
            run = session(threads, spinning).run
            for feed in feeds[:10]:
                run(None, feed)
            started = time.perf_counter()
            if workers == 1:
                for feed in feeds:
                    run(None, feed)
            else:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(run, [None] * len(feeds), feeds))
            seconds = time.perf_counter() - started
            rows.append({"length_config": name, "way": way, "windows_per_second": round(len(feeds) / seconds, 1)})
            print(rows[-1], flush=True)
    lines = [
        "# The onnxruntime engine's int8 graph: threads per call against calls side by side",
        "",
        f"The first {len(questions)} dev questions ({len(windows)} windows), one window per call, model time only.",
        "",
        "| length config | way | windows/s |",
        "|---|---|---|",
        *(f"| {r['length_config']} | {r['way']} | {r['windows_per_second']} |" for r in rows),
    ]
    show_result(args.output, "\n".join(lines) + "\n", {"rows": rows}, checkpoint.resolve(None))


if __name__ == "__main__":
    main()
