"""`dtb export`: a model (a training checkpoint, an average of two) into a release folder."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from .. import checkpoint
from ..frontier import FILENAME as FRONTIER_FILE
from .common import UsageError, add_model_args, required_model


def add_parsers(commands: argparse._SubParsersAction) -> None:
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

    export.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Weights, config and tokenizer in the Hugging Face layout, plus the model's frontier if it has one."""
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
