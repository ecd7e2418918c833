"""Can the length-adaptive model itself run on ONNX Runtime, with the keep counts as inputs, and is it faster?

Issue 26 asks whether the token-dropping encoder could run on a peer's engine, so that one compiled model
serves every frontier point. This exports the shipped model for one window at a time (no padding, so no
mask): its inputs are the token ids, the token types and the number of tokens each layer keeps, and the
graph selects the tokens itself as `model.select_tokens` does (rank first, then the learned scorer's
significance; protected question tokens in at most half the kept slots), gathers them, and restores the
dropped ones before the span head. It checks the logits against the eager model under each configuration,
quantises the export as ONNX Runtime's dynamic int8 (per channel, as the `onnxruntime:int8` peer is; and
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
from torch import nn

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.features import collate
from dynamic_tinybert.model import RANK_QUESTION, RANK_TOKEN, BertForQuestionAnswering, restore, token_ranks
from dynamic_tinybert.squad import f1_score, load_squad

RANK_WEIGHT = 1e6  # a rank outweighs any significance in the selection key (float64 keeps the significance's digits)


class OneWindowAdaptiveModel(nn.Module):
    """The model for a single unpadded window, its per-layer keep counts an input: (ids, types, keep) -> logits."""

    def __init__(self, model: BertForQuestionAnswering, protect_question: bool) -> None:
        super().__init__()
        self.model = model
        self.protect_question = protect_question
        self.eval()  # the export puts a module back in the mode it found it in, and its children with it

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        bert = self.model.bert
        T = input_ids.shape[1]
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        rank = token_ranks(mask, token_type_ids, self.protect_question)[0]  # (T,)
        x = bert.embeddings(input_ids, token_type_ids)  # (1, T, H)
        positions = torch.arange(T)
        restored = torch.zeros_like(x)
        for i, layer in enumerate(bert.encoder.layer):
            attended, _ = layer.attention(x, mask[:, : x.shape[1]], need_scores=False)
            significance = layer.token_scorer(attended)[0, :, 0].double()  # (K,)
            index = self.select(significance, rank, keep[i])
            restored = restore(restored, x, positions[None])  # dropped tokens keep this layer's input
            attended, positions, rank = attended[:, index], positions[index], rank[index]
            x = layer.feed_forward(attended)
        hidden = restore(restored, x, positions[None])
        return self.model.qa_outputs(hidden)[0].t()  # (2, T): start, end

    @staticmethod
    def select(significance: torch.Tensor, rank: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Indices of the `keep` tokens kept, in their order: by rank, then significance; protected question
        tokens past the first keep // 2 of them (by significance) compete as context tokens."""
        K = significance.shape[0]
        count = torch.ones_like(rank).sum()  # K as a tensor the export keeps dynamic
        question = rank == RANK_QUESTION
        by_question = torch.where(question, significance, torch.full_like(significance, -torch.inf))
        order = torch.topk(by_question, K).indices
        place = torch.empty_like(order).scatter(0, order, torch.arange(K))
        rank = torch.where(question & (place >= keep // 2), torch.full_like(rank, RANK_TOKEN), rank)
        kept = torch.topk(rank.double() * RANK_WEIGHT + significance, torch.minimum(keep, count)).indices
        return torch.sort(kept).values


def export(model: OneWindowAdaptiveModel, path: Path, layers: int) -> None:
    ids = torch.ones(1, 20, dtype=torch.long)
    types = torch.zeros(1, 20, dtype=torch.long)
    keep = torch.full((layers,), 20, dtype=torch.long)
    torch.onnx.export(
        model,
        (ids, types, keep),
        str(path),
        input_names=["input_ids", "token_type_ids", "keep"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {1: "tokens"}, "token_type_ids": {1: "tokens"}, "logits": {1: "tokens"}},
        opset_version=17,
        dynamo=False,
    )


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
    export(OneWindowAdaptiveModel(qa.model, protect_question=True), fp32_path, layers)
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
        real = torch.tensor([window.length])
        keep = real.repeat(layers) if config is None else config.keep_counts(real)[0]
        return batch, {
            "input_ids": batch.input_ids.numpy(),
            "token_type_ids": batch.token_type_ids.numpy(),
            "keep": keep.numpy(),
        }

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
