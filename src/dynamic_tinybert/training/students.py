"""Where a trained model starts: a subset of a teacher's layers, or a frozen model given token scorers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..model import BertForQuestionAnswering, is_token_scorer


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


def frozen_with_token_scorers(model: BertForQuestionAnswering) -> BertForQuestionAnswering:
    """`model` with learned token selection: its own weights, frozen, plus fresh (or its existing) token scorers.

    Only the scorers can learn, so the model's full-length answers stay exactly what they were.
    """
    scored = BertForQuestionAnswering(replace(model.config, token_selection="learned"))
    missing = scored.load_state_dict(model.state_dict(), strict=False).missing_keys
    if not all(is_token_scorer(name) for name in missing):
        raise ValueError(f"weights the scored copy could not take from the model: {missing[:5]}")
    for name, parameter in scored.named_parameters():
        parameter.requires_grad_(is_token_scorer(name))
    return scored
