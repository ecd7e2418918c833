"""What every `dtb` command shares: the one-line usage error, argument types, the model, device and
answering flags (derived from `AnswerOptions`), and the tables commands print."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from .. import checkpoint
from ..engines import ENGINES
from ..length_config import LengthConfig, LengthConfigError
from ..options import LENGTH_CHOICES, option_field, option_names, option_type
from ..precision import PRECISIONS
from ..runtime import check_device

MODEL_ENV = "DTB_MODEL"
# The answering options that decide the windows and the answers' length: every answering command takes them.
WINDOW_OPTIONS = ("batch_size", "max_seq_len", "doc_stride", "max_question_len", "max_answer_len")


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number > 0")
    return value


def int_list_arg(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 128,384")
    return values


def float_list_arg(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give keep ratios in (0, 1], e.g. 1.0,0.8,0.6")
    return values


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


def device_arg(text: str) -> str:
    """cpu or cuda[:N], refused at once when this torch cannot use it."""
    try:
        check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV),
        help=f"checkpoint directory or Hugging Face Hub id (default: ${MODEL_ENV}, else the shipped model)",
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")


def add_device_arg(parser: argparse.ArgumentParser, help: str = "cpu, or cuda (cuda:N): where the model runs") -> None:
    parser.add_argument("--device", type=device_arg, default="cpu", help=help)


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32", help="encoder Linear layers: bf16 (native-bf16 CPUs) or int8"
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="what runs the model: torch (eager), onnxruntime (CPU, fp32 or int8), auto (onnxruntime for int8 on "
        "the CPU where it is installed, else torch)",
    )


def add_answer_options(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None, **defaults) -> None:
    """One flag per `AnswerOptions` field in `names` (None: all), typed, defaulted and explained by the field.

    `defaults` override a field's default for this command (`dtb eval` reads answers up to 30 tokens). The
    length choices, where given, are mutually exclusive; a boolean option gets --name and --no-name.
    """
    names = tuple(option_names()) if names is None else names
    choices = parser.add_mutually_exclusive_group() if set(names) & set(LENGTH_CHOICES) else None
    for name in names:
        field = option_field(name)
        kind = option_type(name)
        flag = "--" + name.replace("_", "-")
        settings = dict(default=defaults.get(name, field.default), help=field.metadata["help"])
        if kind is bool:
            settings["action"] = argparse.BooleanOptionalAction
        else:
            settings["type"] = length_config_arg if kind is LengthConfig else kind
        (choices if name in LENGTH_CHOICES else parser).add_argument(flag, **settings)


def answer_options(args: argparse.Namespace) -> dict:
    """The `AnswerOptions` values the command's flags hold (only the options it has flags for)."""
    return {name: getattr(args, name) for name in option_names() if hasattr(args, name)}


def window_options(args: argparse.Namespace) -> dict:
    """The options that shape windows and answers, without the length choice: for tokenising once."""
    return {name: getattr(args, name) for name in WINDOW_OPTIONS}


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
    return _answerer(args, required_model(args), revision=args.revision, **defaults)


def answerer_and_folder(args: argparse.Namespace):
    """The model of --model, in --precision, with its local folder: search, sweep and calibrate write there."""
    directory = checkpoint.resolve(required_model(args), args.revision)
    return _answerer(args, directory), directory


def _answerer(args: argparse.Namespace, model, **settings):
    """`QuestionAnswerer.from_pretrained` with what --device, --precision and --engine say runs it."""
    from ..pipeline import QuestionAnswerer

    return QuestionAnswerer.from_pretrained(
        model, device=args.device, precision=args.precision, engine=args.engine, **settings
    )


def output_folder(args: argparse.Namespace, directory: Path) -> Path:
    """Where a search writes: --output, else the model's folder when it is a local one."""
    if args.output is not None:
        return args.output
    if args.model is None:
        raise UsageError(
            f"dtb {args.command}: give --output (or --model with a folder of your own): "
            "the shipped model's folder is part of the installed package"
        )
    if Path(args.model).expanduser().is_dir():
        return directory
    raise UsageError(f"dtb {args.command}: {args.model} is a hub id; give --output to say where to write results")


def print_table(values: dict) -> None:
    width = max(len(k) for k in values)
    for key, value in values.items():
        shown = f"{value:.2f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"{key:<{width}}  {shown}")


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
