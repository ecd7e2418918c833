"""Which tokens should a dropping layer keep? Attention ranking against learned token scorers, same weights.

The model given has learned token selection (`dtb train scorers`); its twin ranks tokens by the attention
they receive (the Length-Adaptive Transformer's significance) with exactly the same encoder and span
head. Both answer the same dev questions at full length (where they are identical) and under the same
dropping configurations: those `experiments/length_drop.py` scores, the same with question tokens protected
("+q"), and any given with --config. Writes a markdown table and JSON.

    python experiments/token_selection.py --model runs/scorers/model \
        --eval-data ../shared/data/squad/dev-v1.1.json.gz --eval-questions 1000 \
        --config 1.0,0.7,0.5,0.35,0.25,0.2+q --output docs/experiments/results/token-selection
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from dynamic_tinybert import LengthConfig, checkpoint
from dynamic_tinybert.benchmark import results
from dynamic_tinybert.frontier import load_frontier
from dynamic_tinybert.model import BertForQuestionAnswering, is_token_scorer
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad


def attention_twin(model: BertForQuestionAnswering) -> BertForQuestionAnswering:
    """The same weights ranking tokens by attention: the learned scorers left out."""
    twin = BertForQuestionAnswering(replace(model.config, token_selection="attention"))
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if not is_token_scorer(k)})
    return twin.eval()


def main() -> None:
    parser = results.script_parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint with learned token selection")
    parser.add_argument(
        "--frontier-from", type=Path, help="whose pareto.json gives frontier configs (default: shipped)"
    )
    parser.add_argument("--eval-data", type=Path, required=True, help="SQuAD dev file")
    parser.add_argument("--eval-questions", type=int, default=1000, help="the first N dev questions")
    parser.add_argument("--config", action="append", default=[], help="another length config to score (repeatable)")
    results.add_run_args(parser)
    args = results.parse_args(parser)
    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again

    directory = checkpoint.resolve(args.model)
    learned = checkpoint.load_model(directory)
    if learned.config.token_selection != "learned":
        parser.error(f"--model {args.model}: token_selection is {learned.config.token_selection!r}, not 'learned'")
    tokenizer = checkpoint.load_tokenizer(directory)
    dev = load_squad(args.eval_data, limit=args.eval_questions)
    frontier = load_frontier(checkpoint.resolve(args.frontier_from))
    configs = results.dropping_configs(learned.config.num_hidden_layers, frontier)
    protected = {f"{name} +q": replace(c, protect_question=True) for name, c in configs.items() if c is not None}
    extra = {text: LengthConfig.parse(text) for text in args.config}
    result = {
        "model": str(args.model),
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "eval": {"data": args.eval_data.name, "questions": len(dev.questions)},
        "configs": {name: "full" if c is None else str(c) for name, c in {**configs, **protected, **extra}.items()},
        "attention": results.score_configs(attention_twin(learned), tokenizer, dev, configs, batch_size=64),
    }
    print("attention", json.dumps(result["attention"]), flush=True)
    result["learned"] = results.score_configs(learned, tokenizer, dev, {**configs, **protected, **extra}, batch_size=64)
    print("learned", json.dumps(result["learned"]), flush=True)
    results.write_result(args.output, markdown(result), result, directory)


def markdown(result: dict) -> str:
    attention, learned = result["attention"], result["learned"]
    full = learned["full"]["f1"]
    lines = [
        "# Token selection: attention ranking against learned token scorers, same weights",
        "",
        f"Model `{result['model']}` and its attention-ranking twin (the same weights without the scorers), "
        f"CPU, {result['threads']} threads. F1 on the first {result['eval']['questions']:,} questions of "
        f"{result['eval']['data']}; MACs ratio against full length, every window at its real length (no padding). "
        "'+q': question tokens are kept first.",
        "",
        "| config | keep ratios | MACs ratio | F1 attention | F1 learned | learned - full |",
        "|---|---|---|---|---|---|",
    ]
    for name, text in result["configs"].items():
        by_attention = f"{attention[name]['f1']:.2f}" if name in attention else "-"
        row = learned[name]
        cells = f"{row['macs_ratio']:.3f} | {by_attention} | {row['f1']:.2f} | {row['f1'] - full:+.2f}"
        lines.append(f"| {name} | {text} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
