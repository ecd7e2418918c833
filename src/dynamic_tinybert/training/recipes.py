"""The training recipes `dtb train` runs: where each stage starts, what it minimises, and its defaults.

A stage is `finetune` (span loss), `id` or `pd` (TinyBERT intermediate or prediction distillation from a
teacher) or `scorers` (learned token selection on a frozen model); LengthDrop wraps any of them but `id`
and `scorers`. Learning rate, epochs and batch size default to the published recipes (docs/reference.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .. import checkpoint
from ..model import BertForQuestionAnswering
from .objectives import (
    IntermediateDistillation,
    LengthDrop,
    Objective,
    PredictionDistillation,
    SpanLoss,
    TokenScoring,
)
from .students import frozen_with_token_scorers, student_from_teacher_layers

STAGES = ("finetune", "id", "pd", "scorers")


@dataclass(frozen=True)
class Recipe:
    """A stage's published defaults."""

    learning_rate: float
    epochs: int
    batch_size: int


RECIPES = {
    "finetune": Recipe(3e-5, 2, 8),
    "length-drop": Recipe(2e-5, 10, 32),
    "id": Recipe(5e-5, 20, 16),
    "pd": Recipe(3e-5, 10, 16),
    "scorers": Recipe(1e-3, 1, 32),  # this project's: only the token scorers learn, a linear probe per layer
}


@dataclass(frozen=True)
class LengthDropSettings:
    """LengthDrop's sandwich (Kim & Cho 2021): see `objectives.LengthDrop`."""

    ratio_bound: float = 0.2
    num_sandwich: int = 2
    layer_drop: float = 0.2
    protect_question: bool = False
    fresh_only: bool = False


def recipe(stage: str, length_drop: bool) -> Recipe:
    """The defaults a stage trains with; LengthDrop has its own (LAT's)."""
    return RECIPES["length-drop" if length_drop else stage]


@dataclass
class Start:
    """What a stage starts from: the model that learns, the teacher (distillation only), one tokenizer."""

    model: BertForQuestionAnswering
    teacher: BertForQuestionAnswering | None
    tokenizer: Tokenizer


def start(
    stage: str,
    model: str | None = None,
    teacher: str | None = None,
    student: str | None = None,
    student_layers: Sequence[int] | None = None,
    revision: str | None = None,
) -> Start:
    """Load what `stage` trains: `model` (finetune, scorers), or a `teacher` and a `student` checkpoint or
    the teacher's `student_layers` (0-based; id, pd). A student must share the teacher's vocabulary."""
    if stage in ("finetune", "scorers"):
        directory = checkpoint.resolve(model, revision)
        learner = checkpoint.load_model(directory)
        if stage == "scorers":
            learner = frozen_with_token_scorers(learner)
        return Start(learner, None, checkpoint.load_tokenizer(directory))
    directory = checkpoint.resolve(teacher, revision)
    teacher_model, tokenizer = checkpoint.load_model(directory), checkpoint.load_tokenizer(directory)
    if student_layers:
        return Start(student_from_teacher_layers(teacher_model, student_layers), teacher_model, tokenizer)
    student_dir = checkpoint.resolve(student, revision)
    if checkpoint.load_tokenizer(student_dir).get_vocab() != tokenizer.get_vocab():
        raise ValueError("teacher and student tokenizers differ; distillation needs one vocabulary")
    return Start(checkpoint.load_model(student_dir), teacher_model, tokenizer)


def objective(
    stage: str,
    begin: Start,
    attention: str = "probs",
    temperature: float = 1.0,
    length_drop: LengthDropSettings | None = None,
    seed: int = 0,
) -> Objective:
    """The loss `stage` minimises, wrapped in LengthDrop when `length_drop` is given."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    if length_drop is not None and stage == "id":
        raise ValueError("LengthDrop (--length-drop) goes with the pd stage (or finetune), not id")
    if length_drop is not None and stage == "scorers":
        raise ValueError("the scorers stage trains a frozen model; LengthDrop (--length-drop) does not apply")
    if stage == "finetune":
        base: Objective = SpanLoss()
    elif stage == "scorers":
        base = TokenScoring()
    elif stage == "pd":
        base = PredictionDistillation(begin.teacher, temperature)
    else:
        base = IntermediateDistillation(begin.teacher, begin.model, attention)
    if length_drop is None:
        return base
    return LengthDrop(
        base,
        length_drop.ratio_bound,
        length_drop.num_sandwich,
        length_drop.layer_drop,
        seed=seed,
        protect_question=length_drop.protect_question,
        fresh_only=length_drop.fresh_only,
    )
