"""What the scripts in bench/ and experiments/ share: their common arguments, the length configs they score,
and one way to write a result.

Every script writes through `write_result`, so that each OUTPUT.json records how it was made (date, git
commit, model sha256, CPU model and instruction sets, package versions: `provenance`) and each OUTPUT.md
says so in a line beneath its title. Scripts import what they share from here, never from each other.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..evaluate import Evaluator
from ..fileio import write_report
from ..frontier import Frontier
from ..length_config import LengthConfig
from ..pipeline import QuestionAnswerer
from ..squad import SquadDataset, SquadQuestion
from .provenance import provenance, provenance_line

SQUAD_DIR_VARIABLE = "DTB_SQUAD_DIR"


# --- arguments ---------------------------------------------------------------------------------------------------


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A script's argument parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=doc.split("\n")[0])


def squad_file(name: str) -> Path:
    """An official SQuAD file by name: in $DTB_SQUAD_DIR, else in ../shared/data/squad beside this checkout
    (where the tests look for them too)."""
    folder = os.environ.get(SQUAD_DIR_VARIABLE)
    base = Path(folder) if folder else Path(__file__).resolve().parents[4] / "shared" / "data" / "squad"
    return base / name


def add_data_arg(parser: argparse.ArgumentParser, name: str, flag: str = "--data", help: str = "SQuAD file") -> None:
    """`flag` for a SQuAD file, the official file `name` by default."""
    default = squad_file(name)
    parser.add_argument(flag, type=Path, default=default, help=f"{help} (default: {default})")


def add_run_args(parser: argparse.ArgumentParser, threads: int | None = None, output_required: bool = True) -> None:
    """--threads (torch's CPU threads) and --output (where OUTPUT.md and OUTPUT.json go)."""
    default = "torch's choice" if threads is None else threads
    parser.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default: {default})")
    parser.add_argument(
        "--output",
        type=Path,
        required=output_required,
        help="writes OUTPUT.md and OUTPUT.json" if output_required else "write OUTPUT.md and OUTPUT.json",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed arguments; torch is given the --threads asked for."""
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return args


def texts(questions: Sequence[SquadQuestion]) -> tuple[list[str], list[str]]:
    """The questions' texts and their contexts, as `QuestionAnswerer` and `measure_latencies` take them."""
    return [q.question for q in questions], [q.context for q in questions]


# --- what the token-dropping studies score -----------------------------------------------------------------------


def dropping_configs(num_layers: int, frontier: Frontier | None) -> dict[str, LengthConfig | None]:
    """Keep ratios (of each window's real tokens) per layer to score: a constant slope inside LengthDrop's
    training range, LengthDrop's own smallest sub-model, and the model's second and third most expensive
    frontier points (where it has a frontier)."""
    slope = tuple(round(0.9 - 0.5 * i / max(1, num_layers - 1), 4) for i in range(num_layers))
    smallest = tuple(round(0.8 ** (i + 1), 6) for i in range(num_layers))  # 6 decimals: 0.8^i exactly, i <= 6
    configs = {
        "full": None,
        "slope 0.9-0.4": LengthConfig.ratios(slope),
        "smallest (0.8^i)": LengthConfig.ratios(smallest),
    }
    points = [] if frontier is None else frontier.points  # cheapest first
    for index in range(len(points) - 2, max(-1, len(points) - 4), -1):
        configs[f"frontier {index}"] = points[index].length_config
    return configs


def score_configs(model, tokenizer, dev: SquadDataset, configs: dict, batch_size: int) -> dict:
    """EM, F1 and MACs ratio of `model` on `dev` under each config."""
    qa = QuestionAnswerer(model.eval(), tokenizer, batch_size=batch_size)
    evaluator = Evaluator(qa, dev, max_answer_len=30)
    scores = {}
    for name, config in configs.items():
        evaluation = evaluator(config)
        scores[name] = {"f1": round(evaluation.f1, 2), "em": round(evaluation.exact_match, 2)}
        scores[name]["macs_ratio"] = round(evaluation.macs_ratio, 3)
    return scores


# --- writing ------------------------------------------------------------------------------------------------------


def write_result(
    output: str | os.PathLike,
    table: str,
    data: dict,
    model_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> list[Path]:
    """OUTPUT.md and OUTPUT.json, each written atomically, both saying how the result was made.

    The JSON is `data` with `provenance(model_dir, device)` under "provenance"; the markdown is `table` with
    `provenance_line` beneath its title. `model_dir` is the checkpoint measured (None: no model, no hash).
    """
    found = provenance(model_dir, device)
    return write_report(output, with_provenance(table, found), {**data, "provenance": found})


def with_provenance(table: str, found: dict) -> str:
    """`table` with the provenance line beneath its `#` title, or first where it has no title."""
    line = provenance_line(found)
    title, _, rest = table.partition("\n")
    if not title.startswith("#"):
        return f"{line}\n\n{table}"
    return f"{title}\n\n{line}\n\n{rest.lstrip(chr(10))}"


def show_result(
    output: str | os.PathLike | None,
    table: str,
    data: dict,
    model_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> None:
    """Print the table; with an output, write the result there (`write_result`) and say where."""
    print(table, end="" if table.endswith("\n") else "\n")
    if output is not None:
        for path in write_result(output, table, data, model_dir, device):
            print(f"written to {path}")
