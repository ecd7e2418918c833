"""`dtb ask`, `answer`, `eval`, `score` and `info`: answer questions (a few, or a file of any length), score a
SQuAD file, describe a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from .. import checkpoint
from ..cost import macs
from ..fileio import decode_utf8
from ..frontier import load_frontier
from ..options import option_field
from ..runtime import keep_freed_memory, peak_rss_mib, return_freed_memory
from ..squad import load_na_probs, load_predictions, load_squad, score_predictions, write_predictions
from ..training.pruning import BLOCK_SHARE, sparsity_report
from .common import (
    WINDOW_OPTIONS,
    UsageError,
    add_answer_options,
    add_device_arg,
    add_model_args,
    add_precision_arg,
    answer_options,
    int_list_arg,
    length_config_arg,
    load_answerer,
    positive_int,
    print_frontier,
    print_table,
    required_model,
)

# How `dtb info` describes the zeros of the encoder's Linear weights.
SPARSITY_PATTERNS = {
    "dense": "dense: no zeros",
    "1x4": f"zeros in 1x4 blocks (at least {BLOCK_SHARE:.0%} of them): 4 consecutive output rows of one input column",
    "4x1": f"zeros in 4x1 blocks (at least {BLOCK_SHARE:.0%} of them): 4 consecutive input columns of one output row",
    "unstructured": f"unstructured zeros: under {BLOCK_SHARE:.0%} of them fill whole 1x4 or 4x1 blocks",
}


def add_parsers(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="answer a question about a context")
    ask.add_argument("question", nargs="?", help="the question (omit with --input)")
    source = ask.add_mutually_exclusive_group()
    source.add_argument("--context", help="the context text")
    source.add_argument("--context-file", type=Path, help="read the context from this file")
    source.add_argument("--input", type=Path, help="JSON lines of {'question': ..., 'context': ...}")
    source.add_argument("--index", type=Path, help="answer from the passages of this index (`dtb index`)")
    ask.add_argument(
        "--retrieve",
        type=positive_int,
        default=20,
        help="with --index: passages to retrieve and read (default 20, at most 1000)",
    )
    add_model_args(ask)
    add_device_arg(ask)
    add_precision_arg(ask)
    add_answer_options(ask)
    ask.add_argument("--json", action="store_true", help="print JSON instead of text")
    ask.set_defaults(run=cmd_ask)

    job = commands.add_parser("answer", help="answer a JSON-lines file of any length into another, resumably")
    job.add_argument(
        "--input", type=Path, required=True, help='JSON lines of {"id": ..., "question": ..., "context": ...}'
    )
    job.add_argument(
        "--output", type=Path, required=True, help='where {"id": ..., "answers": [...]} lines are appended'
    )
    job.add_argument("--resume", action="store_true", help="skip the ids --output already answers, append the rest")
    job.add_argument(
        "--chunk-size",
        type=positive_int,
        default=1024,
        help="questions answered together (memory grows with it, not with the input)",
    )
    add_model_args(job)
    add_device_arg(job)
    add_precision_arg(job)
    add_answer_options(job)
    job.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="answer on Ray: a local instance, or the cluster at ADDRESS (auto, ray://HOST:10001)",
    )
    job.add_argument("--actors", type=positive_int, help="with --ray: actors holding the model (default 2)")
    job.add_argument("--threads-per-actor", type=positive_int, help="with --ray: torch threads per actor (default 1)")
    job.add_argument("--json", action="store_true", help="print the summary as JSON")
    job.set_defaults(run=cmd_answer)

    ev = commands.add_parser("eval", help="answer a SQuAD file and score it")
    ev.add_argument("--data", type=Path, required=True, help="SQuAD v1.1 or v2.0 file (.json or .json.gz)")
    add_model_args(ev)
    add_device_arg(ev)
    add_precision_arg(ev)
    add_answer_options(ev, ("length_config", "budget", "latency_ms", *WINDOW_OPTIONS), max_answer_len=30)
    ev.add_argument("--limit", type=positive_int, help="only the first N questions")
    ev.add_argument("--predictions", type=Path, default=Path("predictions.json"), help="where to write answers")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    ev.set_defaults(run=cmd_eval)

    score = commands.add_parser("score", help="score a predictions file as the official SQuAD scripts do")
    score.add_argument("--data", type=Path, required=True)
    score.add_argument("--predictions", type=Path, required=True)
    score.add_argument("--na-probs", type=Path, help="SQuAD 2.0 no-answer probabilities (JSON id -> prob)")
    score.add_argument("--na-prob-threshold", type=float, default=1.0)
    score.add_argument(
        "--limit", type=positive_int, help="only the first N questions of the file, as `dtb eval --limit N`"
    )
    score.add_argument(
        "--predicted-only",
        action="store_true",
        help="score only the questions the file has a prediction for (the official rule counts the rest as 0)",
    )
    score.add_argument("--json", action="store_true")
    score.set_defaults(run=cmd_score)

    info = commands.add_parser("info", help="shape, parameters, sparsity, MACs and frontier of a model")
    add_model_args(info)
    info.add_argument(
        "--lengths", type=int_list_arg, help="input lengths for the MACs table (default: 128 and min(positions, 384))"
    )
    info.add_argument("--length-config", type=length_config_arg, help="also count MACs under this config")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=cmd_info)


def cmd_ask(args: argparse.Namespace) -> int:
    if args.index is not None:
        return ask_index(args)
    questions, contexts = read_ask_inputs(args)
    qa = load_answerer(args)
    run = qa.run(questions, contexts, **answer_options(args))
    for question, answers in zip(questions, run.answers, strict=True):
        if args.json:
            print(json.dumps({"question": question, "answers": answers}, ensure_ascii=False))
            continue
        if len(questions) > 1:
            print(f"Q: {question}")
        for a in answers:
            print(f"{a['answer'] or '(no answer)'}\t(score {a['score']:.4f}, chars {a['start']}-{a['end']})")
    return 0


def ask_index(args: argparse.Namespace) -> int:
    """Retrieve passages from the index, read them, and print the answers with the file and line of each."""
    from ..reading import NOT_FOR_READING
    from ..retrieval import Retriever

    if not args.question:
        raise UsageError("dtb ask: give a question to ask the index")
    options = answer_options(args)
    for name in NOT_FOR_READING:
        if options.pop(name) != option_field(name).default:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"dtb ask: {flag} does not apply with --index: the no-answer probability is printed")
    retriever = Retriever.load(args.index)
    result = retriever.ask(load_answerer(args), args.question, retrieve=args.retrieve, **options)
    if args.json:
        print(json.dumps({"question": args.question, **result}, ensure_ascii=False))
        return 0
    if not result["passages"]:
        print("(no passage shares a word with the question)")
        return 0
    for a in result["answers"]:
        where = a["source"] if a["record"] is None else f"{a['source']} record {a['record']}"
        chars = f"chars {a['source_start']}-{a['source_end']}"
        print(f"{' '.join(a['answer'].split())}\t(score {a['score']:.4f}, {where}:{a['line']}, {chars})")
    print(f"no answer in the {result['passages']} passages read: probability {result['no_answer']:.4f}")
    return 0


def read_ask_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.input is not None:
        if args.question:
            raise UsageError("dtb ask: give either a question or --input, not both")
        return read_jsonl_pairs(args.input)
    if not args.question:
        raise UsageError("dtb ask: give a question (or --input FILE)")
    if args.context is not None:
        context = args.context
    elif args.context_file is not None:
        context = read_utf8(args.context_file.read_bytes(), str(args.context_file))
    elif not sys.stdin.isatty():
        raw = getattr(sys.stdin, "buffer", None)  # a text stream without bytes underneath is read as it is
        context = sys.stdin.read() if raw is None else read_utf8(raw.read(), "standard input")
    else:
        raise UsageError("dtb ask: give the context with --context, --context-file or on stdin")
    return [args.question], [context]


def read_utf8(data: bytes, source: str) -> str:
    try:
        return decode_utf8(data, source)
    except ValueError as e:
        raise UsageError(f"dtb ask: {e}") from None


def read_jsonl_pairs(path: Path) -> tuple[list[str], list[str]]:
    """Questions and contexts from JSON lines {"question": ..., "context": ...}; errors name the line."""
    questions, contexts = [], []
    for number, line in enumerate(read_utf8(path.read_bytes(), str(path)).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"dtb ask: {path}:{number}: not JSON ({e.msg})") from None
        if not (
            isinstance(pair, dict) and isinstance(pair.get("question"), str) and isinstance(pair.get("context"), str)
        ):
            raise UsageError(f'dtb ask: {path}:{number}: expected {{"question": string, "context": string}}')
        questions.append(pair["question"])
        contexts.append(pair["context"])
    if not questions:
        raise UsageError(f"dtb ask: {path}: no questions in the file")
    return questions, contexts


def cmd_answer(args: argparse.Namespace) -> int:
    from ..batch_job import run_job

    if args.ray is None and (args.actors or args.threads_per_actor):
        raise UsageError("dtb answer: --actors and --threads-per-actor go with --ray")
    if args.ray is not None and args.threads:
        raise UsageError("dtb answer: with --ray, give the threads with --threads-per-actor, not --threads")
    return_freed_memory()  # flat memory however long the input (runtime.py)
    with tqdm(unit="q", desc="answer", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:

        def on_plan(plan) -> None:
            bar.reset(total=plan.pending)
            if plan.done:
                bar.set_postfix_str(f"{plan.done:,} answered before")

        job = dict(chunk_size=args.chunk_size, resume=args.resume, progress=bar.update, on_plan=on_plan)
        if args.ray is None:
            summary = run_job(load_answerer(args), args.input, args.output, **job, **answer_options(args))
        else:
            from ..scale_out import run_job_on_ray

            summary = run_job_on_ray(
                required_model(args),
                args.input,
                args.output,
                revision=args.revision,
                device=args.device,
                precision=args.precision,
                engine=args.engine,
                actors=args.actors or 2,
                threads_per_actor=args.threads_per_actor or 1,
                address=None if args.ray == "local" else args.ray,
                **job,
                **answer_options(args),
            )
    result = {**summary.to_dict(), "output": str(args.output), "peak_rss_mib": round(peak_rss_mib(), 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    keep_freed_memory()  # one long batch job: reuse freed activations instead of faulting pages in again
    dataset = load_squad(args.data, limit=args.limit)
    qa = load_answerer(args)
    with tqdm(total=None, unit="window", desc="eval", file=sys.stderr, disable=None) as bar:
        result = evaluate(qa, dataset, progress=bar.update, **answer_options(args))
    write_predictions(args.predictions, result.predictions)
    summary = {
        **result.summary(),
        "length_config": str(result.length_config or "full"),
        "precision": args.precision,
        "engine": qa.engine.name,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "predictions": str(args.predictions),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    dataset = load_squad(args.data, limit=args.limit)
    predictions = load_predictions(args.predictions)
    if args.predicted_only:
        dataset = dataset.select(q.id for q in dataset.questions if q.id in predictions)
        if not dataset.questions:
            raise UsageError(f"dtb score: --predicted-only: {args.predictions} predicts none of the questions")
    na_probs = load_na_probs(args.na_probs) if args.na_probs else None
    metrics = score_predictions(dataset, predictions, na_probs=na_probs, na_prob_threshold=args.na_prob_threshold)
    if metrics["missing"]:
        missing, total = len(metrics["missing"]), len(dataset.questions)
        print(
            f"note: {missing:,} of {total:,} questions have no prediction and score 0, as the official script "
            f"counts them; --predicted-only scores the {total - missing:,} predicted ones, --limit N the first N",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print_table({**{k: v for k, v in metrics.items() if k != "missing"}, "missing": len(metrics["missing"])})
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    directory = checkpoint.resolve(required_model(args), args.revision)
    model = checkpoint.load_model(directory)
    config = model.config
    if args.length_config is not None:
        args.length_config.check_fits(config.num_hidden_layers, config.max_position_embeddings)
    rows = []
    lengths = args.lengths or sorted(
        {min(128, config.max_position_embeddings), min(384, config.max_position_embeddings)}
    )
    for n in lengths:
        if n > config.max_position_embeddings:
            raise UsageError(f"dtb info: --lengths {n} exceeds the model's {config.max_position_embeddings} positions")
        full = macs(config, n)
        row = {"tokens": n, "macs_full": full}
        if args.length_config is not None:
            row["macs_config"] = macs(config, n, args.length_config)
            row["ratio"] = round(row["macs_config"] / full, 4)
        rows.append(row)
    info = {
        "model": str(directory),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "heads": config.num_attention_heads,
        "intermediate": config.intermediate_size,
        "vocab": config.vocab_size,
        "max_positions": config.max_position_embeddings,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sparsity": sparsity_report(model),
        "length_config": str(args.length_config) if args.length_config else None,
        "macs": rows,
    }
    frontier = load_frontier(directory)
    if args.json:
        print(json.dumps({**info, "frontier": frontier.to_dict() if frontier else None}, indent=2))
        return 0
    sparsity = info["sparsity"]
    shown = {
        **{k: v for k, v in info.items() if k not in ("macs", "sparsity") and v is not None},
        "sparsity": f"{sparsity['overall']:.4f} ({SPARSITY_PATTERNS[sparsity['pattern']]})",
        "zeros_in_blocks": ", ".join(
            f"{share:.2%} in whole {p} blocks" for p, share in sparsity["block_shares"].items()
        ),
        "layer_sparsity": " ".join(f"{s:.4f}" for s in sparsity["layers"]),
    }
    print_table(shown)
    print()
    header = ["tokens", "macs_full"] + (["macs_config", "ratio"] if args.length_config else [])
    print("  ".join(f"{h:>16}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]:>16,}" if isinstance(row[h], int) else f"{row[h]:>16}" for h in header))
    print()
    if frontier is None:
        print("no accuracy/cost frontier (pareto.json): `dtb search` finds one")
    else:
        search = frontier.search
        print(f"accuracy/cost frontier: {search.get('method', '?')} search on {frontier.full.data}")
        print_frontier(frontier)
    return 0
