"""SQuAD v1.1 dev results of a model and every point of its frontier, beside the published numbers.

For the full model and each point of the model's `pareto.json` (if it has one): EM and F1 on all dev
questions, mean MACs per question, MACs as a fraction of the full model on the same inputs at their real
length (the honest ratio), MACs as a fraction of the full model at 384 padded tokens per window (the ratio
LAT and Intel report, which also credits dropping padding), and questions/s end to end on this machine
(tokenisation once per run, model and decoding); for a pruned model, how sparse its encoder is.
Writes a markdown table and JSON.

    python bench/squad_dev.py --model M --output bench/results/squad-dev
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dynamic_tinybert import QuestionAnswerer
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.cost import macs
from dynamic_tinybert.evaluate import Evaluator
from dynamic_tinybert.frontier import load_frontier
from dynamic_tinybert.precision import PRECISIONS
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad
from dynamic_tinybert.training.pruning import sparsity_report

# docs/reference.md, "Published results": published, not measured here.
PUBLISHED = [
    ("BERT-base", "88.5", "1x", "Dynamic-TinyBERT README"),
    ("DistilBERT", "85.8", "-", "Dynamic-TinyBERT README"),
    ("TinyBERT-6L", "87.5", "2x", "Dynamic-TinyBERT README"),
    ("Dynamic-TinyBERT", "88.71 (max)", "3.3x within 1% of BERT", "paper, model card"),
    ("LA-MiniLM 6L-384 (269,253,252,202,104,34)", "87.76", "4.94x", "Intel QuaLA-MiniLM, Xeon 8280, batch 32"),
    ("QuaLA-MiniLM int8", "87.68", "8.82x", "Intel QuaLA-MiniLM"),
    ("80% 1x4 block-sparse BERT-base (Prune OFA)", "EM 81.29 / F1 88.47", "-", "model card"),
]


def measure(model: Path, data: Path, limit: int | None, batch_size: int, precision: str) -> dict:
    qa = QuestionAnswerer.from_pretrained(model, precision=precision, max_answer_len=30, batch_size=batch_size)
    frontier = load_frontier(model)
    dataset = load_squad(data, limit=limit)
    started = time.perf_counter()
    evaluator = Evaluator(qa, dataset)
    tokenise_seconds = time.perf_counter() - started
    padded_full = len(evaluator.windows) * macs(qa.model.config, 384) / len(dataset.questions)
    rows = []
    points = [("full", None)]
    if frontier is not None:
        points += [(f"frontier {i}", p) for i, p in enumerate(frontier.points)]
    for name, point in points:
        config = None if point is None else point.length_config
        evaluation = evaluator(config)
        seconds = evaluation.seconds + tokenise_seconds
        rows.append(
            {
                "point": name,
                "length_config": "full length" if config is None else str(config),
                "em": round(evaluation.exact_match, 2),
                "f1": round(evaluation.f1, 2),
                "search_f1": None if point is None else round(point.f1, 2),
                "mean_macs": round(evaluation.mean_macs),
                "macs_ratio": round(evaluation.macs_ratio, 4),
                "macs_ratio_vs_padded_384": round(evaluation.mean_macs / padded_full, 4),
                "questions_per_second": round(len(dataset.questions) / seconds, 2),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    sparsity = sparsity_report(qa.model) if precision == "fp32" else None  # int8/bf16 copies hide the zeros
    return {
        "model": str(model),
        "sparsity": None
        if sparsity is None
        else {"overall": round(sparsity["overall"], 4), "pattern": sparsity["pattern"]},
        "data": f"{data.name} ({len(dataset.questions)} questions, {len(evaluator.windows)} windows)",
        "search": None if frontier is None else frontier.search,
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, {precision}, batch {batch_size}",
        "rows": rows,
    }


def searched(result: dict) -> str:
    """Where the frontier came from, and how sparse the encoder is, for the table's header."""
    sparsity = result.get("sparsity")
    text = "" if not sparsity else f"Encoder Linear weights {sparsity['overall']:.1%} zero ({sparsity['pattern']}). "
    search = result["search"]
    if search is None:
        return text + "The model has no frontier: full length only."
    return text + f"The frontier was searched on {search.get('data', '?')} ({search.get('method', '?')}), not on dev."


def markdown(result: dict) -> str:
    full = result["rows"][0]
    lines = [
        f"# SQuAD v1.1 dev: {result['model']}",
        "",
        f"Measured on {result['data']}; {result['machine']}. " + searched(result),
        "",
        "| point | length config | EM | F1 | ΔF1 | GMACs/question | MACs ratio (real length) "
        "| MACs ratio vs padded 384 (LAT/Intel count) | questions/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['point']} | {row['length_config']} | {row['em']:.2f} | {row['f1']:.2f} "
            f"| {row['f1'] - full['f1']:+.2f} | {row['mean_macs'] / 1e9:.3f} | {row['macs_ratio']:.3f} "
            f"| {row['macs_ratio_vs_padded_384']:.3f} | {row['questions_per_second']:.1f} |"
        )
    lines += ["", "Published (docs/reference.md), **not measured here**:", ""]
    lines += ["| model | SQuAD1.1 F1 | speedup | source |", "|---|---|---|---|"]
    lines += [f"| {m} | {f1} | {speed} | {source} |" for m, f1, speed, source in PUBLISHED]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint directory with a pareto.json")
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="encoder Linear layers (CPU)")
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    keep_freed_memory()  # one long batch job, as `dtb eval` runs it
    result = measure(args.model, args.data, args.limit, args.batch_size, args.precision)
    show_result(args.output, markdown(result), result, args.model)


if __name__ == "__main__":
    main()
