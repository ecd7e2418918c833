"""Latency measured on this machine: milliseconds per question, end to end, and how it grows with length.

MACs predict cost only roughly on a real CPU (argsorts, gathers and small matmuls do not run at peak),
so a latency budget has to be checked against time measured here, for the batch size the caller uses.
A question's cost also grows with its length (a 300-token context costs about twice a 150-token one), so
each configuration gets a line, ms per question against real tokens per question, fitted over the sample;
a budget then predicts a request's latency at the request's own length, not at the sample's mean.
The line itself (`Latency`) and choosing by it live with the frontier (`frontier.py`); this module times.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .frontier import BudgetError, Frontier, Latency, fit_latency
from .length_config import LengthConfig

if TYPE_CHECKING:
    from .pipeline import QuestionAnswerer

T = TypeVar("T")


def measure_latencies(
    qa: QuestionAnswerer,
    questions: Sequence[str],
    contexts: Sequence[str],
    length_configs: Sequence[LengthConfig | None],
    batch_size: int = 1,
    repeats: int = 3,
) -> list[Latency]:
    """The latency of each configuration on these pairs (tokenise, model, decode), at this batch size.

    The pairs go in chunks of `batch_size` (at 1, one call per question, as a service answers single
    requests). Every chunk runs under every configuration in turn, so that a slow spell of the machine
    falls on all configurations alike instead of on whichever happened to be measured then; one untimed
    pass first warms caches and the allocator. Each (configuration, chunk) keeps its median of `repeats`.
    """
    if not questions:
        raise ValueError("latency needs at least one question")
    if len(questions) != len(contexts):
        raise ValueError(f"got {len(questions)} questions but {len(contexts)} contexts")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    chunks = [
        (list(questions[i : i + batch_size]), list(contexts[i : i + batch_size]))
        for i in range(0, len(questions), batch_size)
    ]
    tokens = np.array([sum(w.length for w in qa.windows(q, c)) / len(q) for q, c in chunks])
    ms = np.zeros((repeats, len(length_configs), len(chunks)))
    for repeat in range(-1, repeats):  # -1: the warm-up pass
        for j, (chunk_questions, chunk_contexts) in enumerate(chunks):
            for i, config in enumerate(length_configs):
                started = time.perf_counter()
                qa.run(chunk_questions, chunk_contexts, length_config=config, batch_size=batch_size)
                if repeat >= 0:
                    ms[repeat, i, j] = 1000.0 * (time.perf_counter() - started) / len(chunk_questions)
    per_chunk = np.median(ms, axis=0)
    return [fit_latency(tokens, row) for row in per_chunk]


def calibrate(
    qa: QuestionAnswerer, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 1, repeats: int = 3
) -> Frontier:
    """Measure every frontier point's latency on this machine, so that `latency_ms` budgets hold here.

    Latencies in `pareto.json` were measured where the search ran; this replaces them in `qa.frontier`
    (in memory; the caller may save the returned frontier) with ms per question on these inputs at this
    batch size, and how that grows per token. Give questions of varied lengths: the slope is fitted
    across them.
    """
    if qa.frontier is None:
        raise BudgetError("this model has no accuracy/cost frontier (pareto.json) to calibrate")
    qa.frontier = qa.frontier.with_latencies(
        lambda configs: measure_latencies(qa, questions, contexts, configs, batch_size, repeats), batch_size
    )
    return qa.frontier


def evenly_spaced(items: Sequence[T], count: int) -> list[T]:
    """`count` items spread evenly over `items` (all of them if there are fewer).

    A calibration sample should span the lengths requests come in: the first questions of a SQuAD file
    share an article and its few paragraph lengths, which fixes neither the line's level nor its slope.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count >= len(items):
        return list(items)
    return [items[k * len(items) // count] for k in range(count)]
