"""`dtb index`: text, markdown and JSONL files -> passages -> a BM25 index that `dtb ask --index` answers from."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..retrieval import PASSAGE_CHARS, Retriever, read_passages, source_files
from .common import UsageError, positive_int


def add_parsers(commands: argparse._SubParsersAction) -> None:
    index = commands.add_parser("index", help="index text, markdown and JSONL files for `dtb ask --index`")
    index.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help='files or folders (searched recursively): .txt, .md, .jsonl of {"id", "text"} records',
    )
    index.add_argument("--output", type=Path, required=True, help="the index folder to write")
    index.add_argument(
        "--passage-chars",
        type=positive_int,
        default=PASSAGE_CHARS,
        help=f"longest passage in characters: whole paragraphs up to this (default {PASSAGE_CHARS})",
    )
    index.set_defaults(run=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    files = source_files(args.paths)
    if not files:
        raise UsageError("dtb index: no .txt, .md or .jsonl files in the paths given")
    passages = read_passages(files, args.passage_chars)
    if not passages:
        raise UsageError(f"dtb index: the {len(files)} file(s) given hold no text")
    folder = Retriever.build(passages, passage_chars=args.passage_chars).save(args.output)
    print(f"indexed {len(passages):,} passages from {len(files):,} files into {folder}")
    return 0
