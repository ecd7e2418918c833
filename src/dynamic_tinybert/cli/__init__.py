"""`dtb`: the command line, a thin layer over the library, one module per workflow.

    dtb ask "Where do I live?" --context "My name is Wolfgang and I live in Berlin" --model DIR_OR_HUB_ID
    dtb eval --model M --data dev-v1.1.json.gz --limit 500          (answer: ask, eval, score, info)
    dtb index notes/ --output notes.idx; dtb ask "Where do I live?" --index notes.idx   (documents)
    dtb train finetune --model M --data train-v2.0.json.gz ...      (train)
    dtb search --model M --data train-v2.0.json.gz ...              (search: search, sweep, calibrate)
    dtb serve | bench | export ...

A usage or input error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
import warnings

from ..checkpoint import CheckpointError
from ..frontier import BudgetError
from ..length_config import LengthConfigError
from . import answer, bench, documents, export, search, serve, train
from .common import MODEL_ENV, Parser, UsageError

WORKFLOWS = (answer, documents, serve, train, search, bench, export)

__all__ = ["MODEL_ENV", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="dtb", description="Fast extractive question answering with length-adaptive BERT.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for workflow in WORKFLOWS:
        workflow.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    warnings.showwarning = lambda message, *_args, **_kw: print(f"warning: {message}", file=sys.stderr)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return args.run(args)
    except (UsageError, CheckpointError, LengthConfigError, BudgetError, ValueError, OSError) as e:
        message = str(e) if isinstance(e, UsageError) else f"dtb: {e}"
        print("error: " + " ".join(message.splitlines()), file=sys.stderr)  # one line, whatever breaks it held
        return 2
