"""`dtb train finetune | distill | scorers`: one resumable training loop, the stage's recipe by default."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import training
from ..features import window_defaults
from ..training import recipes
from ..training.pruning import PATTERNS as PRUNING_PATTERNS
from ..training.pruning import PruningSchedule
from .common import Parser, UsageError, int_list_arg, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="fine-tune or distil a span-QA model (one resumable loop)")
    train.set_defaults(run=cmd_train)
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
        parser.add_argument("--limit", type=positive_int, help="only the first N questions")
        held_out = parser.add_mutually_exclusive_group()
        held_out.add_argument("--eval-data", type=Path, help="held-out SQuAD file evaluated each epoch")
        held_out.add_argument(
            "--holdout-articles", type=int, default=2, help="hold out the last N articles (default 2)"
        )
        parser.add_argument("--epochs", type=positive_int, help="default: the stage's published recipe")
        parser.add_argument(
            "--max-steps", type=positive_int, help="stop after this many optimiser steps (the schedule ends there)"
        )
        parser.add_argument("--batch-size", type=positive_int, help="windows per forward pass and process")
        parser.add_argument("--lr", type=float, help="peak learning rate (default: the stage's recipe)")
        parser.add_argument("--warmup-ratio", type=float, default=0.1)
        parser.add_argument("--weight-decay", type=float, default=0.01)
        parser.add_argument("--grad-accum", type=positive_int, default=1)
        parser.add_argument("--grad-clip", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--save-every", type=positive_int, default=500, help="steps between checkpoints")
        parser.add_argument("--log-every", type=positive_int, default=20)
        parser.add_argument("--max-seq-len", type=int, help="tokens per window (default: min(model positions, 384))")
        parser.add_argument("--doc-stride", type=int, help="window overlap (default: min(max_seq_len // 2, 128))")
        parser.add_argument(
            "--cache-dir", type=Path, help="tokenised features cache (default: ~/.cache/dynamic-tinybert)"
        )
        parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
        parser.add_argument("--threads", type=positive_int, help="CPU threads for torch")
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


def length_drop_settings(args: argparse.Namespace) -> recipes.LengthDropSettings | None:
    """--length-drop and its options, or None; a sub-model option without --length-drop is an error."""
    for given, flag in (
        (args.protect_question, "--protect-question"),
        (args.length_drop_fresh_only, "--length-drop-fresh-only"),
    ):
        if given and not args.length_drop:
            raise UsageError(f"dtb train: {flag} applies to LengthDrop's sub-models; add --length-drop")
    if not args.length_drop:
        return None
    return recipes.LengthDropSettings(
        args.length_drop_ratio_bound,
        args.num_sandwich,
        args.layer_drop,
        protect_question=args.protect_question,
        fresh_only=args.length_drop_fresh_only,
    )


def cmd_train(args: argparse.Namespace) -> int:
    stage = args.stage if args.train_command == "distill" else args.train_command
    if stage == "scorers" and (args.prune_to or args.lock_sparsity):
        raise UsageError("dtb train scorers: the model is frozen; sparsity options do not apply")
    length_drop = length_drop_settings(args)
    pruning = pruning_schedule(args)
    begin = recipes.start(
        stage,
        model=getattr(args, "model", None),
        teacher=getattr(args, "teacher", None),
        student=getattr(args, "student", None),
        student_layers=[i - 1 for i in args.student_layers] if getattr(args, "student_layers", None) else None,
        revision=args.revision,
    )
    objective = recipes.objective(
        stage,
        begin,
        attention=getattr(args, "attention", "probs"),
        temperature=getattr(args, "temperature", 1.0),
        length_drop=length_drop,
        seed=args.seed,
    )
    defaults = recipes.recipe(stage, length_drop is not None)
    settings = training.TrainSettings(
        output_dir=args.output,
        epochs=defaults.epochs if args.epochs is None else args.epochs,
        max_steps=args.max_steps,
        batch_size=defaults.batch_size if args.batch_size is None else args.batch_size,
        learning_rate=defaults.learning_rate if args.lr is None else args.lr,
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
    positions = begin.model.config.max_position_embeddings
    max_seq_len, doc_stride = window_defaults(positions, args.max_seq_len, args.doc_stride)
    if max_seq_len > positions:
        raise UsageError(f"dtb train: --max-seq-len {max_seq_len} exceeds the model's {positions} positions")
    features, held_out = training.data.training_data(
        begin.tokenizer,
        args.data,
        training.WindowSettings(max_seq_len, doc_stride),
        answerable_only=args.answerable_only,
        limit=args.limit,
        holdout_articles=0 if args.eval_data else args.holdout_articles,
        eval_data=args.eval_data,
        cache_dir=args.cache_dir or training.data.default_cache_dir(),
    )
    result = training.train(
        begin.model, begin.tokenizer, objective, features, settings, eval_set=held_out, resume=args.resume
    )
    print(json.dumps({"model": str(args.output / "model"), "held_out": result}))
    return 0
