"""Where does a dropping configuration lose accuracy: tokens it drops, or tokens it keeps?

For each window, the full model's answer (its most likely start and end in the context) is compared with
the answer under each length configuration. A configuration answers differently either because a layer
dropped the answer's start or end token (it reaches the span head restored, from the layer where it left),
or because the tokens it kept were computed with part of the context missing. The first is the token
selection's loss (better scorers help), the second the encoder's (LengthDrop training helps). Configs are
the model's frontier by default. Prints a table and writes JSON.

    python experiments/answer_survival.py --data ../shared/data/squad/train-v2.0.json.gz --answerable-only \
        --last-articles 2 --threads 2 --output docs/experiments/results/answer-survival
"""

from __future__ import annotations

from pathlib import Path

import torch

from dynamic_tinybert import LengthConfig, QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_run_args, parse_args, script_parser, show_result, texts
from dynamic_tinybert.features import Window, batches
from dynamic_tinybert.runtime import keep_freed_memory
from dynamic_tinybert.squad import load_squad


def most_likely_span(out, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely start and end (B,) in each window's context."""
    context = (batch.token_type_ids == 1) & batch.attention_mask.bool()
    start = out.start_logits.masked_fill(~context, -torch.inf).argmax(dim=1)
    end = out.end_logits.masked_fill(~context, -torch.inf).argmax(dim=1)
    return start, end


def survival(qa: QuestionAnswerer, windows: list[Window], configs: list[LengthConfig], batch_size: int) -> list[dict]:
    """Per config: windows whose full-length answer survives it, and how many of each kind answer differently."""
    counts = [dict.fromkeys(("survived", "survived_changed", "dropped", "dropped_changed"), 0) for _ in configs]
    model = qa.model
    with torch.inference_mode():
        for batch in batches(windows, batch_size, qa.pad_id):
            inputs = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
            start, end = most_likely_span(model(*inputs), batch)
            for config, count in zip(configs, counts, strict=True):
                out = model(*inputs, length_config=config)
                new_start, new_end = most_likely_span(out, batch)
                # out.fresh: the tokens that left the last layer; the others reach the span head restored
                fresh = torch.ones_like(batch.attention_mask, dtype=torch.bool) if out.fresh is None else out.fresh
                survived = fresh.gather(1, start[:, None]).squeeze(1) & fresh.gather(1, end[:, None]).squeeze(1)
                changed = (new_start != start) | (new_end != end)
                count["survived"] += int(survived.sum())
                count["survived_changed"] += int((survived & changed).sum())
                count["dropped"] += int((~survived).sum())
                count["dropped_changed"] += int((~survived & changed).sum())
    return counts


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="a SQuAD file")
    parser.add_argument("--answerable-only", action="store_true", help="only questions with an answer")
    parser.add_argument("--last-articles", type=int, help="only the file's last N articles (the search's held-out)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--config", action="append", default=[], help="a length config (repeatable; default: frontier)")
    parser.add_argument("--batch-size", type=int, default=64)
    add_run_args(parser)
    args = parse_args(parser)
    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again

    directory = checkpoint.resolve(args.model)
    qa = QuestionAnswerer.from_pretrained(directory)
    dataset = load_squad(args.data, answerable_only=args.answerable_only, limit=args.limit)
    if args.last_articles:
        try:
            dataset = dataset.split_articles(args.last_articles)[1]
        except ValueError as error:
            parser.error(f"--last-articles: {error}")
    if args.config:
        configs = [LengthConfig.parse(text) for text in args.config]
    elif qa.frontier is not None:
        configs = [point.length_config for point in qa.frontier.points]
    else:
        parser.error("the model has no frontier (pareto.json); give --config")
    windows = qa.windows(*texts(dataset.questions))

    rows = []
    for config, counts in zip(configs, survival(qa, windows, configs, args.batch_size), strict=True):
        changed = counts["survived_changed"] + counts["dropped_changed"]
        rows.append(
            {
                "length_config": str(config),
                "windows": len(windows),
                **counts,
                "answer_survives": round(counts["survived"] / len(windows), 4),
                "changed": changed,
                "changed_by_dropping": round(counts["dropped_changed"] / changed, 4) if changed else 0.0,
            }
        )
    header = (
        "| keep ratios | answer survives | answers differently: answer dropped | answer kept"
        " | share of the changes due to dropping |\n|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r['length_config']} | {r['answer_survives']:.1%} ({r['survived']}/{r['windows']})"
        f" | {r['dropped_changed']} of {r['dropped']} | {r['survived_changed']} of {r['survived']}"
        f" | {r['changed_by_dropping']:.0%} |\n"
        for r in rows
    )
    data = {
        "model": args.model or "shipped",
        "data": args.data.name,
        "questions": len(dataset.questions),
        "rows": rows,
    }
    show_result(args.output, table, data, directory)


if __name__ == "__main__":
    main()
