"""Does 1x4 block sparsity pay off on this CPU? Dense against sparse kernels, per Linear layer and whole model.

For the Linear shapes of MiniLM-L6-H384 and BERT-base, with 80% and 90% of the weight pruned in 1x4 blocks
(4 consecutive output rows sharing one input column, as Prune Once for All prunes), times y = x W^T + b for
a single question's window (170 tokens) and a batch of 32 of them, with each kernel torch offers on CPU:
dense fp32, dense bf16, and the weight as CSR (MKL sparse) in fp32. Block-sparse BSR needs square blocks in
MKL, so 1x4 blocks can only go through CSR. Prints a table of medians and writes JSON.

With `--model` (a pruned checkpoint), also the whole model end to end on SQuAD dev questions, one call per
question and batches of 32: its encoder Linear layers dense fp32, as CSR, and int8 for comparison.

    python experiments/sparse_linear.py --threads 2 --output docs/experiments/results/sparse-linear
    python experiments/sparse_linear.py --threads 2 --model runs/pruned80/model \
        --output docs/experiments/results/sparse-model
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result, texts
from dynamic_tinybert.latency import measure_latencies
from dynamic_tinybert.precision import with_precision
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad
from dynamic_tinybert.training.pruning import encoder_linears, magnitude_mask, sparsity_report

SHAPES = {  # (out_features, in_features) of the encoder's Linear layers
    "MiniLM-L6-H384 attention (384x384)": (384, 384),
    "MiniLM-L6-H384 intermediate (1536x384)": (1536, 384),
    "MiniLM-L6-H384 output (384x1536)": (384, 1536),
    "BERT-base attention (768x768)": (768, 768),
    "BERT-base intermediate (3072x768)": (3072, 768),
    "BERT-base output (768x3072)": (768, 3072),
}


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * sorted(times)[len(times) // 2]


def kernels(weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """Each way torch can compute x W^T + b on CPU, as functions of x (tokens, in_features)."""
    bf16_weight, bf16_bias = weight.to(torch.bfloat16), bias.to(torch.bfloat16)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        csr = weight.to_sparse_csr()
    return {
        "dense fp32": lambda x: F.linear(x, weight, bias),
        "dense bf16": lambda x: F.linear(x.to(torch.bfloat16), bf16_weight, bf16_bias),
        "CSR fp32": lambda x: torch.addmm(bias[:, None], csr, x.T).T,
    }


def measure(tokens: list[int], sparsities: list[float], repeats: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for name, (out_features, in_features) in SHAPES.items():
        dense = torch.randn(out_features, in_features) * 0.05
        bias = torch.randn(out_features) * 0.01
        for sparsity in sparsities:
            weight = dense * magnitude_mask(dense, sparsity, "1x4")
            funcs = kernels(weight, bias)
            for n in tokens:
                x = torch.randn(n, in_features)
                expected = funcs["dense fp32"](x)
                for kernel, fn in funcs.items():
                    got = fn(x).float()
                    tolerance = 0.1 if "bf16" in kernel else 1e-3
                    assert torch.allclose(got, expected, atol=tolerance), (name, kernel)  # each computes the same
                    rows.append(
                        {
                            "layer": name,
                            "sparsity": sparsity,
                            "tokens": n,
                            "kernel": kernel,
                            "ms": round(median_ms(lambda fn=fn, x=x: fn(x), repeats), 4),
                        }
                    )
    return rows


class CSRLinear(nn.Module):
    """A pruned Linear layer whose weight is stored and multiplied as CSR (MKL sparse on CPU)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = linear.bias.detach()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return torch.addmm(self.bias, self.weight, flat.T).T.reshape(*x.shape[:-1], -1)


def with_csr_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose encoder Linear layers run as CSR."""
    model = copy.deepcopy(model).eval()
    for name in encoder_linears(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, CSRLinear(getattr(parent, child)))
    return model


def measure_model(model_dir: Path, data: Path, questions: int, repeats: int) -> dict:
    """Whole model, end to end per question: dense fp32 against CSR (and int8) encoder Linear layers."""
    dense = QuestionAnswerer.from_pretrained(model_dir, max_answer_len=30)
    report = sparsity_report(dense.model)
    variants = {
        "dense fp32": dense,
        "CSR fp32": QuestionAnswerer(with_csr_linears(dense.model), dense.tokenizer, max_answer_len=30),
        "dense int8": QuestionAnswerer(with_precision(dense.model, "int8"), dense.tokenizer, max_answer_len=30),
    }
    sample = texts(load_squad(data, limit=questions).questions)
    windows = dense.windows(*sample)
    expected = dense.logits(windows, None, 32)[0]
    csr_logits = variants["CSR fp32"].logits(windows, None, 32)[0]
    difference = max(float(abs(a - b).max()) for a, b in zip(expected, csr_logits))
    assert difference < 1e-3, f"CSR logits differ from dense by {difference}"
    rows = []
    for batch_size in (1, 32):
        for kernel, qa in variants.items():
            (latency,) = measure_latencies(qa, *sample, [None], batch_size, repeats)
            rows.append({"kernel": kernel, "batch_size": batch_size, "ms_per_question": round(latency.ms, 3)})
            print(rows[-1], flush=True)
    return {
        "model": str(model_dir),
        "sparsity": round(report["overall"], 4),
        "pattern": report["pattern"],
        "questions": f"{data.name} first {questions}, {len(windows)} windows",
        "max_logit_difference_csr_vs_dense": difference,
        "rows": rows,
    }


def model_markdown(result: dict) -> str:
    lines = [
        f"## Whole model: {result['model']} ({result['sparsity']:.1%} sparse, {result['pattern']})",
        "",
        f"End to end (tokenise, model, decode) on {result['questions']}; median of repeats per question; CSR "
        f"logits within {result['max_logit_difference_csr_vs_dense']:.1e} of dense.",
        "",
        "| batch size | encoder Linear layers | ms per question | speed-up vs dense fp32 |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        base = next(b["ms_per_question"] for b in result["rows"] if b["batch_size"] == r["batch_size"])
        lines.append(
            f"| {r['batch_size']} | {r['kernel']} | {r['ms_per_question']:.2f} | {base / r['ms_per_question']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], threads: int) -> str:
    kernels_ = list(dict.fromkeys(r["kernel"] for r in rows))
    lines = [
        f"# 1x4 block-sparse Linear layers on {cpu_model()} "
        f"({torch.backends.cpu.get_cpu_capability()}), {threads} thread(s), torch {torch.__version__}",
        "",
        "Median ms per call; speed-up against dense fp32 of the same layer in brackets.",
        "",
        "| layer | sparsity | tokens | " + " | ".join(kernels_) + " |",
        "|---|---|---|" + "---|" * len(kernels_),
    ]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["layer"], r["sparsity"], r["tokens"]), {})[r["kernel"]] = r["ms"]
    for (layer, sparsity, tokens), times in groups.items():
        base = times["dense fp32"]
        cells = [f"{times[k]:.3f} ({base / times[k]:.2f}x)" for k in kernels_]
        lines.append(f"| {layer} | {sparsity:.0%} | {tokens} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--tokens", type=lambda s: [int(v) for v in s.split(",")], default=[170, 32 * 170])
    parser.add_argument("--sparsities", type=lambda s: [float(v) for v in s.split(",")], default=[0.8, 0.9])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--model", type=Path, help="a pruned checkpoint: time the whole model instead")
    parser.add_argument("--questions", type=int, default=100, help="with --model: dev questions timed")
    add_data_arg(parser, "dev-v1.1.json.gz", help="with --model: the SQuAD file the questions come from")
    add_run_args(parser, threads=2, output_required=False)
    args = parse_args(parser)
    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again
    with torch.inference_mode():
        if args.model is not None:
            measured = measure_model(args.model, args.data, args.questions, min(args.repeats, 5))
            result = {"threads": args.threads, **measured}
            table = model_markdown(result)
        else:
            result = {"threads": args.threads, "rows": measure(args.tokens, args.sparsities, args.repeats)}
            table = markdown(result["rows"], args.threads)
    show_result(args.output, table, result, args.model)


if __name__ == "__main__":
    main()
