"""Answer a SQuAD file with a QuestionAnswerer and score it: EM/F1, questions per second, MACs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .cost import macs
from .length_config import LengthConfig
from .pipeline import QuestionAnswerer
from .squad import SquadDataset, score_predictions


@dataclass
class Evaluation:
    metrics: dict  # as the official SQuAD script reports them (v1.1 or v2.0 keys)
    predictions: dict[str, str]  # question id -> answer text
    questions: int
    windows: int
    seconds: float  # wall time of tokenisation, model and decoding
    mean_macs: float  # per question, under the length config, inputs at their real length
    mean_full_macs: float  # per question, same inputs, full length

    @property
    def questions_per_second(self) -> float:
        return self.questions / self.seconds

    def summary(self) -> dict:
        return {
            **{k: v for k, v in self.metrics.items() if k != "missing"},
            "questions": self.questions,
            "windows": self.windows,
            "seconds": round(self.seconds, 3),
            "questions_per_second": round(self.questions_per_second, 2),
            "mean_macs": round(self.mean_macs),
            "macs_ratio_to_full_length": round(self.mean_macs / self.mean_full_macs, 4),
        }


def evaluate(
    qa: QuestionAnswerer,
    dataset: SquadDataset,
    length_config: LengthConfig | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> Evaluation:
    """Answer every question of `dataset` and score the answers the official way.

    SQuAD 2.0 data lets the empty answer compete (`handle_impossible_answer`); other options
    (max_answer_len, batch_size, doc_stride, ...) pass through to the QuestionAnswerer.
    """
    options.setdefault("handle_impossible_answer", dataset.is_v2)
    questions = dataset.questions
    started = time.perf_counter()
    run = qa.run(
        [q.question for q in questions],
        [q.context for q in questions],
        progress=progress,
        length_config=length_config,
        **options,
    )
    seconds = time.perf_counter() - started
    predictions = {
        q.id: answers[0]["answer"] if answers else "" for q, answers in zip(questions, run.answers, strict=True)
    }
    config = qa.model.config
    tokens = [w.length for w in run.windows]
    return Evaluation(
        metrics=score_predictions(dataset, predictions),
        predictions=predictions,
        questions=len(questions),
        windows=len(run.windows),
        seconds=seconds,
        mean_macs=sum(macs(config, n, length_config) for n in tokens) / len(questions),
        mean_full_macs=sum(macs(config, n) for n in tokens) / len(questions),
    )
