"""F1 of several models under the same length configurations: full length and every point of their frontiers.

Two models' frontiers come from different searches (lengths, seeds, time), so comparing the fronts alone
mixes the models with the searches. This scores each model under the union of their frontier
configurations, on the same questions: by default the held-out training articles the searches use, so dev
stays for the one model that is then chosen. Prints a table and writes JSON.

    python experiments/frontier_configs.py --models SHIPPED,runs/new,runs/avg --threads 2 \
        --output docs/experiments/results/NAME
"""

from __future__ import annotations

from dynamic_tinybert import QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.evaluate import Evaluator
from dynamic_tinybert.frontier import load_frontier
from dynamic_tinybert.squad import load_squad


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--models", required=True, help="comma-separated checkpoints; the first is the baseline")
    add_data_arg(parser, "train-v2.0.json.gz")
    parser.add_argument(
        "--holdout-articles", type=int, default=2, help="score on the last N articles of --data (0: all of it)"
    )
    add_run_args(parser)
    args = parse_args(parser)
    directories = [checkpoint.resolve(name) for name in args.models.split(",")]
    dataset = load_squad(args.data, answerable_only=True)
    if args.holdout_articles:
        dataset = dataset.split_articles(args.holdout_articles)[1]
    configs = {"full": None}
    for directory in directories:
        frontier = load_frontier(directory)
        for point in [] if frontier is None else frontier.points:
            configs.setdefault(str(point.length_config), point.length_config)
    scores: dict[str, dict[str, dict]] = {}
    for directory in directories:
        qa = QuestionAnswerer.from_pretrained(directory, max_answer_len=30, batch_size=32)
        evaluator = Evaluator(qa, dataset)
        for name, config in configs.items():
            evaluation = evaluator(config)
            scores.setdefault(name, {})[str(directory)] = {
                "f1": round(evaluation.f1, 2),
                "macs_ratio": round(evaluation.macs_ratio, 3),
            }
            print(f"{directory.name} {name}: F1 {evaluation.f1:.2f} at {evaluation.macs_ratio:.3f}", flush=True)
    baseline = str(directories[0])
    order = sorted(configs, key=lambda name: scores[name][baseline]["macs_ratio"])
    header = "| length config | MACs ratio | " + " | ".join(d.name for d in directories) + " |\n"
    header += "|---|---|" + "---|" * len(directories) + "\n"
    table = f"# F1 under shared length configurations ({len(dataset.questions)} questions)\n\n" + header
    for name in order:
        cells = " | ".join(f"{scores[name][str(d)]['f1']:.2f}" for d in directories)
        table += f"| {name} | {scores[name][baseline]['macs_ratio']:.3f} | {cells} |\n"
    data = {"questions": len(dataset.questions), "models": [str(d) for d in directories], "scores": scores}
    show_result(args.output, table, data, directories[0])


if __name__ == "__main__":
    main()
