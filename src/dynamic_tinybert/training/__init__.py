"""Training once for every budget: fine-tuning, TinyBERT distillation, LengthDrop, in one resumable loop."""

from .data import Features, WindowSettings, cached_features, label_windows
from .loop import TrainSettings, train
from .objectives import (
    IntermediateDistillation,
    LengthDrop,
    Objective,
    PredictionDistillation,
    SpanLoss,
    TokenScoring,
)
from .students import frozen_with_token_scorers, student_from_teacher_layers

__all__ = [
    "Features",
    "IntermediateDistillation",
    "LengthDrop",
    "Objective",
    "PredictionDistillation",
    "SpanLoss",
    "TokenScoring",
    "TrainSettings",
    "WindowSettings",
    "cached_features",
    "frozen_with_token_scorers",
    "label_windows",
    "student_from_teacher_layers",
    "train",
]
