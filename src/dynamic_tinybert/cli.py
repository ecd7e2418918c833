"""`dtb`: the command line, a thin layer over the library.

    dtb ask "Where do I live?" --context "My name is Wolfgang and I live in Berlin" --model DIR_OR_HUB_ID
    dtb eval --model M --data ../shared/data/squad/dev-v1.1.json.gz --limit 500
    dtb score --data dev-v1.1.json.gz --predictions predictions.json
    dtb info --model M --lengths 128,384 --length-config 0.9,0.8,0.7,0.6,0.5,0.4

A usage or input error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from . import benchmark, checkpoint
from .checkpoint import CheckpointError
from .cost import macs
from .features import window_defaults
from .fileio import atomic_write_text
from .frontier import FILENAME as FRONTIER_FILE
from .frontier import BudgetError, load_frontier, read_frontier
from .length_config import LengthConfig, LengthConfigError
from .precision import PRECISIONS
from .pruning import PATTERNS as PRUNING_PATTERNS
from .pruning import PruningSchedule, sparsity_report
from .search import COSTS, METHODS, SAMPLERS
from .squad import load_predictions, load_squad, score_predictions, write_predictions

MODEL_ENV = "DTB_MODEL"


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")


def length_config_arg(text: str) -> LengthConfig:
    try:
        return LengthConfig.parse(text)
    except LengthConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def int_list_arg(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 128,384")
    return values


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"checkpoint directory or Hugging Face Hub id (default: ${MODEL_ENV}, else the shipped model)",
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def device_arg(text: str) -> str:
    """cpu or cuda[:N], refused at once when this torch cannot use it."""
    try:
        benchmark.check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_device_arg(parser: argparse.ArgumentParser, help: str = "cpu, or cuda (cuda:N): where the model runs") -> None:
    parser.add_argument("--device", type=device_arg, default="cpu", help=help)


def duration_arg(text: str) -> float:
    """Seconds, or a number with s, m or h: "900", "15m", "1.5h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give seconds or e.g. 15m, 1.5h") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def float_list_arg(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give keep ratios in (0, 1], e.g. 1.0,0.8,0.6")
    return values


def add_answer_args(parser: argparse.ArgumentParser, max_answer_len: int) -> None:
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--length-config", type=length_config_arg, help="per-layer tokens (269,253,...) or ratios")
    length.add_argument(
        "--budget", type=float, help="fraction of the full model's MACs: the best frontier config within it"
    )
    length.add_argument(
        "--latency-ms", type=float, help="ms per question on this machine: the best frontier config within it"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-len", type=int, help="tokens per window (default: min(model positions, 384))")
    parser.add_argument("--doc-stride", type=int, help="window overlap in tokens (default: min(max_seq_len//2, 128))")
    parser.add_argument("--max-answer-len", type=int, default=max_answer_len, help="longest answer in tokens")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="encoder Linear layers: bf16 (native-bf16 CPUs) or int8"
    )


def build_parser() -> Parser:
    parser = Parser(prog="dtb", description="Fast extractive question answering with length-adaptive BERT.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    ask = commands.add_parser("ask", help="answer a question about a context")
    ask.add_argument("question", nargs="?", help="the question (omit with --input)")
    source = ask.add_mutually_exclusive_group()
    source.add_argument("--context", help="the context text")
    source.add_argument("--context-file", type=Path, help="read the context from this file")
    source.add_argument("--input", type=Path, help="JSON lines of {'question': ..., 'context': ...}")
    add_model_args(ask)
    add_device_arg(ask)
    add_answer_args(ask, max_answer_len=15)
    ask.add_argument("--top-k", type=int, default=1)
    ask.add_argument("--handle-impossible-answer", action="store_true", help="let the empty answer compete")
    ask.add_argument("--json", action="store_true", help="print JSON instead of text")

    ev = commands.add_parser("eval", help="answer a SQuAD file and score it")
    ev.add_argument("--data", type=Path, required=True, help="SQuAD v1.1 or v2.0 file (.json or .json.gz)")
    add_model_args(ev)
    add_device_arg(ev)
    add_answer_args(ev, max_answer_len=30)
    ev.add_argument("--limit", type=int, help="only the first N questions")
    ev.add_argument("--predictions", type=Path, default=Path("predictions.json"), help="where to write answers")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")

    score = commands.add_parser("score", help="score a predictions file as the official SQuAD scripts do")
    score.add_argument("--data", type=Path, required=True)
    score.add_argument("--predictions", type=Path, required=True)
    score.add_argument("--na-probs", type=Path, help="SQuAD 2.0 no-answer probabilities (JSON id -> prob)")
    score.add_argument("--na-prob-threshold", type=float, default=1.0)
    score.add_argument("--json", action="store_true")

    serve = commands.add_parser("serve", help="answer over HTTP (Hugging Face inference API shape; see serving.py)")
    add_model_args(serve)
    add_device_arg(serve)
    add_answer_args(serve, max_answer_len=15)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)

    add_train_parsers(commands)
    add_search_parsers(commands)
    add_bench_parser(commands)

    export = commands.add_parser("export", help="copy a model (e.g. a training checkpoint) into a release folder")
    add_model_args(export)
    export.add_argument("--output", type=Path, required=True, help="the new checkpoint folder")
    export.add_argument("--fp16", action="store_true", help="store the weights as fp16 (half the size; load as fp32)")
    export.add_argument(
        "--sparse",
        action="store_true",
        help="store matrices that are at least half zeros as bitmask + nonzero values (model.sparse.safetensors; "
        "3.8x smaller at 80%% sparsity; only dynamic-tinybert reads it)",
    )
    export.add_argument(
        "--average-with",
        metavar="MODEL",
        help="export a weighted average of --model and this model's weights (same architecture and vocabulary), "
        "e.g. a LengthDrop-trained model and the one it started from; search its frontier again",
    )
    export.add_argument(
        "--average-weight", type=float, default=0.5, help="the --average-with model's share, in [0, 1] (default 0.5)"
    )

    info = commands.add_parser("info", help="shape, parameters and MACs of a model")
    add_model_args(info)
    info.add_argument(
        "--lengths", type=int_list_arg, help="input lengths for the MACs table (default: 128 and min(positions, 384))"
    )
    info.add_argument("--length-config", type=length_config_arg, help="also count MACs under this config")
    info.add_argument("--json", action="store_true")
    return parser


# Per-stage defaults from the published recipes (REFERENCE.md section 3): learning rate, epochs, batch size.
RECIPES = {
    "finetune": (3e-5, 2, 8),
    "length-drop": (2e-5, 10, 32),
    "id": (5e-5, 20, 16),
    "pd": (3e-5, 10, 16),
    "scorers": (1e-3, 1, 32),  # this project's: only the token scorers learn, a linear probe per layer
}


def add_train_parsers(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="fine-tune or distil a span-QA model (one resumable loop)")
    stages = train.add_subparsers(dest="train_command", required=True, parser_class=Parser)
    finetune = stages.add_parser("finetune", help="fine-tune any BERT checkpoint on SQuAD-format data")
    finetune.add_argument("--model", required=True, help="checkpoint directory or hub id to start from")
    distill = stages.add_parser("distill", help="TinyBERT distillation: intermediate layers (id) or predictions (pd)")
    distill.add_argument("--teacher", required=True, help="fine-tuned teacher checkpoint")
    student = distill.add_mutually_exclusive_group(required=True)
    student.add_argument("--student", help="student checkpoint to start from")
    student.add_argument("--student-layers", type=int_list_arg, help="start from these teacher layers (1-based)")
    distill.add_argument("--stage", choices=["id", "pd"], required=True)
    distill.add_argument(
        "--attention", choices=["probs", "scores"], default="probs", help="id: what attention MSE compares"
    )
    distill.add_argument("--temperature", type=float, default=1.0, help="pd: softmax temperature")
    scorers = stages.add_parser(
        "scorers", help="learned token selection: train per-layer token scorers on a frozen fine-tuned model"
    )
    scorers.add_argument("--model", required=True, help="fine-tuned checkpoint directory or hub id")
    for parser in (finetune, distill, scorers):
        parser.add_argument("--data", type=Path, required=True, help="SQuAD v1.1 or v2.0 training file")
        parser.add_argument("--output", type=Path, required=True, help="run folder: checkpoints, metrics, model/")
        parser.add_argument("--answerable-only", action="store_true", help="drop unanswerable (SQuAD 2.0) questions")
        parser.add_argument("--limit", type=int, help="only the first N questions")
        held_out = parser.add_mutually_exclusive_group()
        held_out.add_argument("--eval-data", type=Path, help="held-out SQuAD file evaluated each epoch")
        held_out.add_argument(
            "--holdout-articles", type=int, default=2, help="hold out the last N articles (default 2)"
        )
        parser.add_argument("--epochs", type=int, help="default: the stage's published recipe")
        parser.add_argument(
            "--max-steps", type=int, help="stop after this many optimiser steps (the schedule ends there)"
        )
        parser.add_argument("--batch-size", type=int, help="windows per forward pass and process")
        parser.add_argument("--lr", type=float, help="peak learning rate (default: the stage's recipe)")
        parser.add_argument("--warmup-ratio", type=float, default=0.1)
        parser.add_argument("--weight-decay", type=float, default=0.01)
        parser.add_argument("--grad-accum", type=int, default=1)
        parser.add_argument("--grad-clip", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--save-every", type=int, default=500, help="steps between checkpoints")
        parser.add_argument("--log-every", type=int, default=20)
        parser.add_argument("--max-seq-len", type=int, help="tokens per window (default: min(model positions, 384))")
        parser.add_argument("--doc-stride", type=int, help="window overlap (default: min(max_seq_len // 2, 128))")
        parser.add_argument(
            "--cache-dir", type=Path, help="tokenised features cache (default: ~/.cache/dynamic-tinybert)"
        )
        parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
        parser.add_argument("--threads", type=int, help="CPU threads for torch")
        parser.add_argument(
            "--precision",
            choices=["auto", "bf16", "fp32"],
            default="auto",
            help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 on a CPU with native bf16 is 2x+ faster",
        )
        parser.add_argument("--revision", help="hub revision of the checkpoints")
        parser.add_argument("--length-drop", action="store_true", help="LengthDrop: train every length at once")
        parser.add_argument("--length-drop-ratio-bound", type=float, default=0.2)
        parser.add_argument("--num-sandwich", type=int, default=2)
        parser.add_argument("--layer-drop", type=float, default=0.2, help="LengthDrop's LayerDrop probability")
        parser.add_argument(
            "--protect-question",
            action="store_true",
            help="LengthDrop's sub-models keep every question token (+q), as a frontier searched so runs them",
        )
        parser.add_argument(
            "--length-drop-fresh-only",
            action="store_true",
            help="sub-models match the full model only over the tokens that leave their last layer, not the "
            "restored ones (for learned token scorers, which keep the answer)",
        )
        sparsity = parser.add_mutually_exclusive_group()
        sparsity.add_argument(
            "--prune-to", type=float, help="prune the encoder's Linear weights to this sparsity (e.g. 0.8)"
        )
        sparsity.add_argument(
            "--lock-sparsity", action="store_true", help="keep the model's zeros zero (fine-tune a sparse model)"
        )
        parser.add_argument(
            "--prune-pattern", choices=list(PRUNING_PATTERNS), help="1x4 blocks (default) or single weights"
        )
        parser.add_argument("--prune-start", type=int, help="optimiser step at which pruning starts (default 0)")
        parser.add_argument("--prune-end", type=int, help="optimiser step at which the --prune-to sparsity is reached")
        parser.add_argument("--prune-every", type=int, help="steps between mask updates (default 100)")


def pruning_schedule(args: argparse.Namespace) -> PruningSchedule | None:
    """--prune-to and the --prune-* options it needs, or None; the options without --prune-to are an error."""
    options = dict(pattern=args.prune_pattern, start=args.prune_start, end=args.prune_end, every=args.prune_every)
    given = {k: v for k, v in options.items() if v is not None}
    if args.prune_to is None:
        if given:
            raise UsageError(f"dtb train: --prune-{next(iter(given))} needs --prune-to")
        return None
    if args.prune_end is None:
        raise UsageError("dtb train: --prune-to needs --prune-end, the step at which that sparsity is reached")
    return PruningSchedule(args.prune_to, **given)


def cmd_train(args: argparse.Namespace) -> int:
    from . import training

    if args.train_command == "distill" and args.stage == "id" and args.length_drop:
        raise UsageError("dtb train distill: --length-drop goes with --stage pd (or finetune), not id")
    if args.train_command == "scorers" and (args.length_drop or args.prune_to or args.lock_sparsity):
        raise UsageError("dtb train scorers: the model is frozen; --length-drop and sparsity options do not apply")
    for given, flag in (
        (args.protect_question, "--protect-question"),
        (args.length_drop_fresh_only, "--length-drop-fresh-only"),
    ):
        if given and not args.length_drop:
            raise UsageError(f"dtb train: {flag} applies to LengthDrop's sub-models; add --length-drop")
    pruning = pruning_schedule(args)
    if args.train_command in ("finetune", "scorers"):
        directory = checkpoint.resolve(args.model, args.revision)
        model, teacher = checkpoint.load_model(directory), None
        if args.train_command == "scorers":
            model = training.frozen_with_token_scorers(model)
    else:
        directory = checkpoint.resolve(args.teacher, args.revision)
        teacher = checkpoint.load_model(directory)
        if args.student_layers:
            layers = [i - 1 for i in args.student_layers]
            model = training.student_from_teacher_layers(teacher, layers)
        else:
            student_dir = checkpoint.resolve(args.student, args.revision)
            model = checkpoint.load_model(student_dir)
            if checkpoint.load_tokenizer(student_dir).get_vocab() != checkpoint.load_tokenizer(directory).get_vocab():
                raise UsageError(
                    "dtb train distill: teacher and student tokenizers differ; distillation needs one vocabulary"
                )
    tokenizer = checkpoint.load_tokenizer(directory)
    stage = args.stage if args.train_command == "distill" else args.train_command
    stage = "length-drop" if args.length_drop else stage
    lr, epochs, batch_size = RECIPES[stage]
    settings = training.TrainSettings(
        output_dir=args.output,
        epochs=epochs if args.epochs is None else args.epochs,
        max_steps=args.max_steps,
        batch_size=batch_size if args.batch_size is None else args.batch_size,
        learning_rate=lr if args.lr is None else args.lr,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        grad_accum=args.grad_accum,
        grad_clip=args.grad_clip,
        seed=args.seed,
        save_every=args.save_every,
        log_every=args.log_every,
        precision=args.precision,
        pruning=pruning,
        lock_sparsity=args.lock_sparsity,
    )
    if args.train_command == "finetune":
        objective = training.SpanLoss()
    elif args.train_command == "scorers":
        objective = training.TokenScoring()
    elif args.stage == "pd":
        objective = training.PredictionDistillation(teacher, args.temperature)
    else:
        objective = training.IntermediateDistillation(teacher, model, args.attention)
    if args.length_drop:
        objective = training.LengthDrop(
            objective,
            args.length_drop_ratio_bound,
            args.num_sandwich,
            args.layer_drop,
            seed=args.seed,
            protect_question=args.protect_question,
            fresh_only=args.length_drop_fresh_only,
        )
    max_seq_len, doc_stride = window_defaults(model.config.max_position_embeddings, args.max_seq_len, args.doc_stride)
    features, held_out = training.data.training_data(
        tokenizer,
        args.data,
        training.WindowSettings(max_seq_len, doc_stride),
        answerable_only=args.answerable_only,
        limit=args.limit,
        holdout_articles=0 if args.eval_data else args.holdout_articles,
        eval_data=args.eval_data,
        cache_dir=args.cache_dir or training.data.default_cache_dir(),
    )
    result = training.train(model, tokenizer, objective, features, settings, eval_set=held_out, resume=args.resume)
    print(json.dumps({"model": str(args.output / "model"), "held_out": result}))
    return 0


def add_search_parsers(commands: argparse._SubParsersAction) -> None:
    search = commands.add_parser("search", help="find the accuracy/cost Pareto frontier of length configurations")
    sweep = commands.add_parser("sweep", help="the constant keep-ratio curve: the baseline a search must beat")
    for parser in (search, sweep):
        add_model_args(parser)
        add_device_arg(parser)
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--data", type=Path, help="the training file: its last --holdout-articles are searched on")
        source.add_argument(
            "--search-data", type=Path, help="search on this whole file instead (e.g. dev, if you must)"
        )
        parser.add_argument(
            "--holdout-articles", type=int, default=2, help="with --data: the held-out articles (as `dtb train`)"
        )
        parser.add_argument("--answerable-only", action="store_true", help="drop unanswerable (SQuAD 2.0) questions")
        parser.add_argument("--limit", type=int, help="only the first N search questions")
        parser.add_argument("--eval-data", type=Path, help="also score the result on this file (e.g. dev-v1.1)")
        parser.add_argument("--eval-limit", type=int, help="only the first N questions of --eval-data")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--max-seq-len", type=int, help="tokens per window (default: min(model positions, 384))")
        parser.add_argument("--doc-stride", type=int, help="window overlap (default: min(max_seq_len//2, 128))")
        parser.add_argument("--max-answer-len", type=int, default=30, help="longest answer in tokens")
        parser.add_argument("--latency-batch-size", type=int, default=1, help="batch size latency is measured at")
        parser.add_argument("--latency-questions", type=int, default=32, help="questions latency is measured on")
        parser.add_argument(
            "--precision", choices=PRECISIONS, default="fp32", help="encoder Linear layers: bf16 or int8 (CPU)"
        )
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    search.add_argument("--method", choices=METHODS, default="evolution")
    search.add_argument("--cost", choices=COSTS, default="macs", help="what the frontier trades F1 for")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--time-limit", type=duration_arg, help="stop searching after this long (e.g. 900, 15m, 2h)")
    search.add_argument("--min-ratio", type=float, default=0.1, help="smallest keep ratio of a layer")
    search.add_argument("--ratio-step", type=float, default=0.05, help="grid step of the keep ratios")
    search.add_argument("--protect-question", action="store_true", help="drop question tokens last")
    search.add_argument("--population", type=int, default=20, help="initial random configs; optuna nsga2 population")
    search.add_argument("--iterations", type=int, default=30, help="evolution: generations")
    search.add_argument("--mutations", type=int, default=30, help="evolution: mutated children per generation")
    search.add_argument("--crossovers", type=int, default=30, help="evolution: crossed children per generation")
    search.add_argument("--mutation-prob", type=float, default=0.5, help="evolution: chance each layer is redrawn")
    search.add_argument("--trials", type=int, default=150, help="optuna: trials in all, counting a resumed run's")
    search.add_argument("--sampler", choices=SAMPLERS, default="nsga2", help="optuna's sampler")
    search.add_argument(
        "--output", type=Path, help="folder for pareto.json, the log and the optuna study (default: the model's)"
    )
    search.add_argument("--plot", type=Path, help="also draw the frontier to this image (e.g. pareto.png)")
    search.add_argument(
        "--max-points", type=int, help="keep at most N frontier points, spread evenly over cost (all stay in the log)"
    )
    search.add_argument(
        "--start-from",
        type=Path,
        help="also measure first the frontier of this pareto.json (or folder holding one), e.g. an earlier search's",
    )
    search.add_argument(
        "--resume",
        action="store_true",
        help="evolution: reuse the points search-log.jsonl in the output folder holds for the same data "
        "(same model and code only; delete a line to measure it again)",
    )
    sweep.add_argument(
        "--ratios",
        type=float_list_arg,
        default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        help="keep ratios to measure (default 1.0,0.9,...,0.1)",
    )
    sweep.add_argument(
        "--output", type=Path, help="write the points as JSON here (default: sweep.json beside the model)"
    )
    sweep.add_argument("--latency", action="store_true", help="also measure ms per question on this machine")

    calibrate = commands.add_parser("calibrate", help="measure the frontier's latencies on this machine")
    add_model_args(calibrate)
    add_device_arg(calibrate)
    calibrate.add_argument("--data", type=Path, required=True, help="SQuAD file whose questions are timed")
    calibrate.add_argument(
        "--limit", type=int, default=32, help="questions to time, spread evenly over the file (default 32)"
    )
    calibrate.add_argument("--batch-size", type=int, default=1, help="batch size the latencies hold for")
    calibrate.add_argument("--repeats", type=int, default=3, help="timed runs per point; the median counts")
    calibrate.add_argument("--precision", choices=PRECISIONS, default="fp32")
    calibrate.add_argument("--output", type=Path, help="folder for the updated pareto.json (default: the model's)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    warnings.showwarning = lambda message, *_args, **_kw: print(f"warning: {message}", file=sys.stderr)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except (UsageError, CheckpointError, LengthConfigError, BudgetError, ValueError, OSError) as e:
        message = str(e) if isinstance(e, UsageError) else f"dtb: {e}"
        print(f"error: {message}".replace("\n", " "), file=sys.stderr)
        return 2


def required_model(args: argparse.Namespace) -> str:
    """--model, else $DTB_MODEL, else the model this package ships."""
    if args.model:
        return args.model
    if (checkpoint.DEFAULT_MODEL / checkpoint.CONFIG).is_file():
        return str(checkpoint.DEFAULT_MODEL)
    raise UsageError(
        f"dtb {args.command}: no model: pass --model DIR_OR_HUB_ID or set ${MODEL_ENV} (no default model is installed)"
    )


def load_answerer(args: argparse.Namespace, **defaults):
    """The model of --model, in --precision; `defaults` are options every call gets unless it overrides them."""
    from .pipeline import QuestionAnswerer

    return QuestionAnswerer.from_pretrained(
        required_model(args), revision=args.revision, device=args.device, precision=args.precision, **defaults
    )


def answerer_and_folder(args: argparse.Namespace):
    """The model of --model, in --precision, with its local folder: search, sweep and calibrate write there."""
    from .pipeline import QuestionAnswerer

    directory = checkpoint.resolve(required_model(args), args.revision)
    return QuestionAnswerer.from_pretrained(directory, device=args.device, precision=args.precision), directory


def answer_options(args: argparse.Namespace) -> dict:
    return dict(
        length_config=args.length_config, budget=args.budget, latency_ms=args.latency_ms, **window_options(args)
    )


def window_options(args: argparse.Namespace) -> dict:
    """The options every answering command shares: batching, windows, answer length."""
    return dict(
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        doc_stride=args.doc_stride,
        max_answer_len=args.max_answer_len,
    )


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
        context = args.context_file.read_text()
    elif not sys.stdin.isatty():
        context = sys.stdin.read()
    else:
        raise UsageError("dtb ask: give the context with --context, --context-file or on stdin")
    return [args.question], [context]


def read_jsonl_pairs(path: Path) -> tuple[list[str], list[str]]:
    """Questions and contexts from JSON lines {"question": ..., "context": ...}; errors name the line."""
    questions, contexts = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
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


def cmd_ask(args: argparse.Namespace) -> int:
    questions, contexts = read_ask_inputs(args)
    qa = load_answerer(args)
    run = qa.run(
        questions,
        contexts,
        top_k=args.top_k,
        handle_impossible_answer=args.handle_impossible_answer,
        **answer_options(args),
    )
    for question, answers in zip(questions, run.answers, strict=True):
        if args.json:
            print(json.dumps({"question": question, "answers": answers}, ensure_ascii=False))
            continue
        if len(questions) > 1:
            print(f"Q: {question}")
        for a in answers:
            print(f"{a['answer'] or '(no answer)'}\t(score {a['score']:.4f}, chars {a['start']}-{a['end']})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serving import create_app
    except ImportError as e:
        extra = "pip install 'dynamic-tinybert[serve]'"
        raise UsageError(f"dtb serve needs the serve extra ({e.name} is missing): {extra}") from None

    qa = load_answerer(args, **answer_options(args))  # checked here: a bad default fails before listening
    uvicorn.run(create_app(qa, name=required_model(args)), host=args.host, port=args.port)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    dataset = load_squad(args.data, limit=args.limit)
    qa = load_answerer(args)
    with tqdm(total=None, unit="window", desc="eval", file=sys.stderr, disable=None) as bar:
        result = evaluate(qa, dataset, progress=bar.update, **answer_options(args))
    write_predictions(args.predictions, result.predictions)
    summary = {
        **result.summary(),
        "length_config": str(result.length_config or "full"),
        "precision": args.precision,
        "peak_rss_mib": round(benchmark.peak_rss_mib(), 1),
        "predictions": str(args.predictions),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    dataset = load_squad(args.data)
    predictions = load_predictions(args.predictions)
    na_probs = json.loads(args.na_probs.read_text()) if args.na_probs else None
    metrics = score_predictions(dataset, predictions, na_probs=na_probs, na_prob_threshold=args.na_prob_threshold)
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


# How `dtb info` describes the zeros of the encoder's Linear weights.
SPARSITY_PATTERNS = {
    "dense": "dense: no zeros",
    "1x4": "zeros in 1x4 blocks: 4 consecutive output rows of one input column",
    "4x1": "zeros in 4x1 blocks: 4 consecutive input columns of one output row",
    "unstructured": "unstructured zeros",
}


def search_set(args: argparse.Namespace):
    """The questions a search or sweep measures F1 on, and a description of them for pareto.json."""
    if args.search_data is not None:
        dataset = load_squad(args.search_data, answerable_only=args.answerable_only, limit=args.limit)
        return dataset, f"{args.search_data.name} ({len(dataset.questions)} questions)"
    dataset = load_squad(args.data, answerable_only=args.answerable_only)
    if args.holdout_articles < 1:
        raise UsageError("dtb search: --holdout-articles must be >= 1 (search on held-out articles, not training ones)")
    held_out = dataset.split_articles(args.holdout_articles)[1]
    if args.limit is not None:
        held_out = held_out.select(q.id for q in held_out.questions[: args.limit])
    answerable = ", answerable only" if args.answerable_only else ""
    return held_out, (
        f"{args.data.name}: last {args.holdout_articles} articles{answerable} ({len(held_out.questions)} questions)"
    )


def eval_set(args: argparse.Namespace):
    """(name, data) of --eval-data: the name says which questions, for pareto.json and the table."""
    data = load_squad(args.eval_data, limit=args.eval_limit)
    limited = f" (first {len(data.questions)})" if args.eval_limit is not None else ""
    return f"{args.eval_data.name}{limited}", data


def output_folder(args: argparse.Namespace, directory: Path) -> Path:
    """Where a search writes: --output, else the model's folder when it is a local one."""
    if args.output is not None:
        return args.output
    if Path(args.model).expanduser().is_dir():
        return directory
    raise UsageError(f"dtb {args.command}: {args.model} is a hub id; give --output to say where to write results")


def cmd_search(args: argparse.Namespace) -> int:
    from .search import EvolutionSettings, SearchSettings, plot_frontier, search

    settings = SearchSettings(
        method=args.method,
        cost=args.cost,
        seed=args.seed,
        time_limit=args.time_limit,
        min_ratio=args.min_ratio,
        ratio_step=args.ratio_step,
        protect_question=args.protect_question,
        evolution=EvolutionSettings(
            args.population, args.iterations, args.mutations, args.crossovers, args.mutation_prob
        ),
        trials=args.trials,
        sampler=args.sampler,
        latency_batch_size=args.latency_batch_size,
        latency_questions=args.latency_questions,
        max_points=args.max_points,
        resume=args.resume,
        start_from=start_configs(args.start_from),
    )
    qa, directory = answerer_and_folder(args)
    output = output_folder(args, directory)
    dataset, name = search_set(args)
    eval_sets = dict([eval_set(args)]) if args.eval_data else None
    with tqdm(total=settings.budget(), unit="config", desc="search", file=sys.stderr, disable=None) as bar:
        frontier = search(qa, dataset, name, settings, output, eval_sets, bar.update, **window_options(args))
    if args.plot is not None:
        plot_frontier(frontier, args.plot, cost=args.cost)
    if args.json:
        print(json.dumps(frontier.to_dict(), indent=1))
    else:
        print(
            f"{len(frontier.points)} frontier points from {frontier.search['evaluations']} configurations; "
            f"written to {output / 'pareto.json'}"
        )
        print_frontier(frontier)
    return 0


def start_configs(path: Path | None) -> tuple[LengthConfig, ...]:
    """The length configurations of the frontier in `path` (a pareto.json or a folder holding one)."""
    if path is None:
        return ()
    frontier = read_frontier(path) if path.is_file() else load_frontier(path)
    if frontier is None:
        raise BudgetError(f"--start-from {path}: no {FRONTIER_FILE} there")
    return tuple(point.length_config for point in frontier.points)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .search import sweep

    qa, directory = answerer_and_folder(args)
    target = args.output or output_folder(args, directory) / "sweep.json"
    dataset, name = search_set(args)
    latency_batch = args.latency_batch_size if args.latency else None
    with tqdm(total=len(args.ratios), unit="config", desc="sweep", file=sys.stderr, disable=None) as bar:
        points = sweep(qa, dataset, name, args.ratios, latency_batch, bar.update, **window_options(args))
    if args.eval_data is not None:
        from .evaluate import Evaluator
        from .search.runner import with_evaluation

        name, data = eval_set(args)
        evaluator = Evaluator(qa, data, **window_options(args))
        points = [with_evaluation(p, name, evaluator) for p in points]
    result = {"format": 1, "data": name, "points": [p.to_dict() for p in points]}
    atomic_write_text(target, json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"written to {target}")
        print_points(points)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .latency import evenly_spaced

    qa, directory = answerer_and_folder(args)
    output = output_folder(args, directory)
    if qa.frontier is None:
        raise UsageError(f"dtb calibrate: {directory} has no frontier (pareto.json); run `dtb search` first")
    sample = evenly_spaced(load_squad(args.data).questions, args.limit)
    frontier = qa.calibrate([q.question for q in sample], [q.context for q in sample], args.batch_size, args.repeats)
    frontier.search["calibrated"] = {
        "questions": len(sample),
        "batch_size": args.batch_size,
        "precision": args.precision,
    }
    frontier.save(output)
    print(f"latencies of {len(frontier.points)} frontier points measured here; written to {output / FRONTIER_FILE}")
    print_frontier(frontier)
    return 0


def print_frontier(frontier) -> None:
    """The frontier as a table, cheapest first, with the full model last for reference."""
    print_points([*frontier.points, frontier.full], labels=[""] * len(frontier.points) + ["full"])


def print_points(points: list, labels: list[str] | None = None) -> None:
    extra = sorted({name for p in points for name in p.evaluations})
    header = ["macs_ratio", "latency_ms", "f1", "em"] + [f"f1 {name}" for name in extra] + ["length_config"]
    rows = []
    for point, label in zip(points, labels or [""] * len(points)):
        latency = "-" if point.latency_ms is None else f"{point.latency_ms:.2f}"
        rows.append(
            [f"{point.macs_ratio:.3f}", latency, f"{point.f1:.2f}", f"{point.em:.2f}"]
            + [f"{point.evaluations[n]['f1']:.2f}" if n in point.evaluations else "-" for n in extra]
            + [f"{point.length_config} {label}".strip()]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(w) if i < len(header) - 1 else cell for i, (cell, w) in enumerate(zip(row, widths))))


def cmd_export(args: argparse.Namespace) -> int:
    """Weights, config and tokenizer in the Hugging Face layout, plus the model's frontier if it has one."""
    import shutil

    import torch

    directory = checkpoint.resolve(required_model(args), args.revision)
    if args.output.resolve() == directory.resolve():
        raise UsageError("dtb export: --output must be a new folder, not the model's own")
    if args.average_with and not 0.0 <= args.average_weight <= 1.0:
        raise UsageError(f"dtb export: --average-weight must be in [0, 1], got {args.average_weight}")
    model, tokenizer = checkpoint.load_model(directory), checkpoint.load_tokenizer(directory)
    if args.average_with:
        average_into(model, tokenizer, args)
    dtype = torch.float16 if args.fp16 else torch.float32
    checkpoint.save_checkpoint(model, tokenizer, args.output, dtype, sparse=args.sparse)
    if (directory / FRONTIER_FILE).is_file() and not args.average_with:  # an average's frontier is its own
        shutil.copyfile(directory / FRONTIER_FILE, args.output / FRONTIER_FILE)
    size = sum(f.stat().st_size for f in args.output.iterdir() if f.is_file())
    stored = f"{'fp16' if args.fp16 else 'fp32'}{', sparse' if args.sparse else ''}"
    print(f"{args.output}: {size / 2**20:.1f} MiB ({stored} weights)")
    return 0


def average_into(model, tokenizer, args: argparse.Namespace) -> None:
    """--average-with: mix the other model's weights into `model`, refusing a different vocabulary."""
    other_directory = checkpoint.resolve(args.average_with)  # --revision is --model's
    if checkpoint.load_tokenizer(other_directory).get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"dtb export: --average-with {args.average_with} has a different vocabulary")
    checkpoint.interpolate(model, checkpoint.load_model(other_directory), args.average_weight)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench", help="questions/s, F1, latency and peak memory beside the transformers pipeline and ONNX Runtime"
    )
    add_model_args(bench)
    bench.add_argument("--data", type=Path, required=True, help="SQuAD file; every system answers the same questions")
    bench.add_argument("--limit", type=int, default=500, help="only the first N questions (default 500)")
    bench.add_argument(
        "--systems",
        type=lambda text: [name for name in text.split(",") if name.strip()],
        help="comma-separated KIND[:OPTION...][@BATCH], e.g. project:frontier@32,project:int8@1,transformers@32 "
        "(default: full length, every frontier point, bf16, int8, the pipeline and ONNX Runtime at batch 1 and 32)",
    )
    bench.add_argument("--max-answer-len", type=int, default=30, help="longest answer in tokens, for every system")
    add_device_arg(
        bench, help="cpu, or cuda: the project and the pipeline on the GPU (default systems there: bf16, batch 1, 256)"
    )
    bench.add_argument("--output", type=Path, help="also write OUTPUT.md, OUTPUT.json and OUTPUT.png")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")


def cmd_bench(args: argparse.Namespace) -> int:
    directory = checkpoint.resolve(required_model(args), args.revision)
    dataset = load_squad(args.data, limit=args.limit)

    def report(row: dict) -> None:
        print(f"{row['system']}: F1 {row['f1']:.2f}, {row['questions_per_second']:.1f} questions/s", file=sys.stderr)

    try:
        result = benchmark.run_benchmark(
            directory,
            dataset,
            systems=args.systems,
            threads=args.threads,
            max_answer_len=args.max_answer_len,
            progress=report,
            data_label=args.data.name,
            device=args.device,
        )
    except ImportError as e:  # a competitor's packages are missing: the message names the extra
        raise UsageError(f"dtb bench: {e}") from None
    sys.stdout.write(json.dumps(result, indent=1) + "\n" if args.json else benchmark.markdown(result))
    if args.output is not None:
        for path in benchmark.write_results(result, args.output):
            print(f"written to {path}", file=sys.stderr)
    return 0


def print_table(values: dict) -> None:
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = f"{value:.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")


COMMANDS = {
    "ask": cmd_ask,
    "serve": cmd_serve,
    "eval": cmd_eval,
    "score": cmd_score,
    "info": cmd_info,
    "export": cmd_export,
    "train": cmd_train,
    "search": cmd_search,
    "sweep": cmd_sweep,
    "calibrate": cmd_calibrate,
    "bench": cmd_bench,
}

if __name__ == "__main__":
    sys.exit(main())
