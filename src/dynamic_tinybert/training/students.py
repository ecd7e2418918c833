"""Where a distilled student starts: a checkpoint of its own, or a subset of the teacher's layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..model import BertForQuestionAnswering


def student_from_teacher_layers(teacher: BertForQuestionAnswering, layers: Sequence[int]) -> BertForQuestionAnswering:
    """A shallower copy of the teacher keeping `layers` (0-based, e.g. 1,3,5 of 6), embeddings and span head."""
    depth = teacher.config.num_hidden_layers
    if not layers or sorted(set(layers)) != list(layers) or layers[0] < 0 or layers[-1] >= depth:
        raise ValueError(f"student layers {list(layers)} must be increasing indices into the teacher's {depth} layers")
    student = BertForQuestionAnswering(replace(teacher.config, num_hidden_layers=len(layers)))
    student.bert.embeddings.load_state_dict(teacher.bert.embeddings.state_dict())
    for mine, theirs in enumerate(layers):
        student.bert.encoder.layer[mine].load_state_dict(teacher.bert.encoder.layer[theirs].state_dict())
    student.qa_outputs.load_state_dict(teacher.qa_outputs.state_dict())
    return student
