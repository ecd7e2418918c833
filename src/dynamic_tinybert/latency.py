"""Latency measured on this machine: milliseconds per question, end to end, median of repeats.

MACs predict cost only roughly on a real CPU (argsorts, gathers and small matmuls do not run at peak),
so a latency budget has to be checked against time measured here, for the batch size the caller uses.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from .length_config import LengthConfig
from .pipeline import QuestionAnswerer


def latency_ms(
    qa: QuestionAnswerer,
    questions: Sequence[str],
    contexts: Sequence[str],
    length_config: LengthConfig | None = None,
    batch_size: int = 1,
    repeats: int = 3,
) -> float:
    """Median over `repeats` of the wall time per question of answering all pairs (tokenise, model, decode).

    One untimed run first warms caches and the allocator. At batch size 1 this is the latency one user
    sees; at larger batch sizes, the inverse of throughput.
    """
    if not questions:
        raise ValueError("latency needs at least one question")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    qa.run(questions, contexts, length_config=length_config, batch_size=batch_size)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        if batch_size == 1:  # one call per question, as a service answers single requests
            for question, context in zip(questions, contexts, strict=True):
                qa.run([question], [context], length_config=length_config, batch_size=1)
        else:
            qa.run(questions, contexts, length_config=length_config, batch_size=batch_size)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times) / len(questions)
