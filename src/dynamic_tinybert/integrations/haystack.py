"""`ExtractiveReader`: a Haystack component that stands where haystack-ai's deprecated `ExtractiveReader` stood.

    pip install "dynamic-tinybert[haystack]"

    from haystack import Pipeline
    from dynamic_tinybert.integrations.haystack import ExtractiveReader

    pipeline.add_component("reader", ExtractiveReader(top_k=5, budget=0.7))
    pipeline.connect("retriever.documents", "reader.documents")
    pipeline.run({"retriever": {"query": q}, "reader": {"query": q}})["reader"]["answers"]

The same inputs (`query`, `documents`, `top_k`, `score_threshold`, `max_seq_length`, `stride`,
`max_batch_size`, `no_answer`, `overlap_threshold`) and output (`answers`: `ExtractedAnswer`s, best first,
the no-answer one among them with `data=None`) as Haystack's reader; answers come from
`QuestionAnswerer.read`, so scores rank across documents the way `reading.py` documents, and a `budget`,
`latency_ms` or `length_config` trades accuracy for speed per call. Documents without text are skipped; no
documents at all gives only the no-answer (score 1), where Haystack's reader failed.
"""

from __future__ import annotations

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.dataclasses import ExtractedAnswer
except ImportError as e:  # the library works without it; only this module needs it
    raise ImportError(
        'dynamic_tinybert.integrations.haystack needs haystack-ai: pip install "dynamic-tinybert[haystack]"'
    ) from e

from ..length_config import LengthConfig
from ..pipeline import QuestionAnswerer


@component
class ExtractiveReader:
    """Extractive answers to a query from Haystack `Document`s, with this project's length-adaptive model.

    `model`: a checkpoint folder or hub id (None: the shipped model), loaded at `warm_up`. `top_k`,
    `max_seq_length` (tokens per window) and `stride` (their overlap), `no_answer`, `overlap_threshold` and
    `score_threshold` as in Haystack's reader; `budget` (fraction of the full model's MACs), `latency_ms`
    or `length_config` (e.g. "0.9,0.8,0.7,0.6,0.5,0.4+q") as in `QuestionAnswerer`, at most one.
    """

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        top_k: int = 20,
        score_threshold: float | None = None,
        max_seq_length: int = 384,
        stride: int = 128,
        max_batch_size: int | None = None,
        no_answer: bool = True,
        overlap_threshold: float | None = 0.01,
        max_answer_length: int = 15,
        budget: float | None = None,
        latency_ms: float | None = None,
        length_config: str | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.max_seq_length = max_seq_length
        self.stride = stride
        self.max_batch_size = max_batch_size
        self.no_answer = no_answer
        self.overlap_threshold = overlap_threshold
        self.max_answer_length = max_answer_length
        self.budget = budget
        self.latency_ms = latency_ms
        self.length_config = length_config
        self._length_options(budget, latency_ms, length_config)  # a bad choice fails here, not at the first run
        self._qa: QuestionAnswerer | None = None

    def warm_up(self) -> None:
        """Load the model once (a Pipeline calls this before its first run)."""
        if self._qa is None:
            self._qa = QuestionAnswerer.from_pretrained(self.model, device=self.device, precision=self.precision)

    def to_dict(self) -> dict:
        return default_to_dict(
            self,
            **{name: getattr(self, name) for name in _INIT_PARAMETERS},
        )

    @classmethod
    def from_dict(cls, data: dict) -> ExtractiveReader:
        return default_from_dict(cls, data)

    @component.output_types(answers=list[ExtractedAnswer])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
        max_seq_length: int | None = None,
        stride: int | None = None,
        max_batch_size: int | None = None,
        no_answer: bool | None = None,
        overlap_threshold: float | None = None,
        budget: float | None = None,
        latency_ms: float | None = None,
        length_config: str | None = None,
    ) -> dict:
        """The `top_k` answers to `query` across `documents`, best first, the no-answer among them if asked."""
        self.warm_up()
        top_k = self.top_k if top_k is None else top_k
        score_threshold = self.score_threshold if score_threshold is None else score_threshold
        no_answer = self.no_answer if no_answer is None else no_answer
        overlap = self.overlap_threshold if overlap_threshold is None else overlap_threshold
        if (budget, latency_ms, length_config) == (None, None, None):
            budget, latency_ms, length_config = self.budget, self.latency_ms, self.length_config
        options = {
            "top_k": top_k,
            "overlap_threshold": overlap,
            "max_seq_len": self.max_seq_length if max_seq_length is None else max_seq_length,
            "doc_stride": self.stride if stride is None else stride,
            "max_answer_len": self.max_answer_length,
            **self._length_options(budget, latency_ms, length_config),
        }
        batch_size = self.max_batch_size if max_batch_size is None else max_batch_size
        if batch_size is not None:
            options["batch_size"] = batch_size
        readable = [(i, d) for i, d in enumerate(documents) if isinstance(d.content, str) and d.content.strip()]
        if not readable:
            return {"answers": [ExtractedAnswer(query=query, score=1.0, data=None, document=None)] if no_answer else []}
        result = self._qa.read(query, [{"id": str(i), "text": d.content} for i, d in readable], **options)
        answers = [
            ExtractedAnswer(
                query=query,
                score=a["score"],
                data=a["answer"],
                document=documents[int(a["document_id"])],
                document_offset=ExtractedAnswer.Span(a["start"], a["end"]),
                meta={"window": a["window"], "margin": a["margin"], "length_config": result["length_config"]},
            )
            for a in result["answers"]
            if score_threshold is None or a["score"] >= score_threshold
        ]
        if no_answer:
            answers.append(ExtractedAnswer(query=query, score=result["no_answer"], data=None, document=None))
            answers.sort(key=lambda a: a.score, reverse=True)
        return {"answers": answers}

    @staticmethod
    def _length_options(budget: float | None, latency_ms: float | None, length_config: str | None) -> dict:
        given = {
            name: value
            for name, value in (("budget", budget), ("latency_ms", latency_ms), ("length_config", length_config))
            if value is not None
        }
        if len(given) > 1:
            raise ValueError(f"give only one of budget, latency_ms and length_config, got {' and '.join(given)}")
        if "length_config" in given:
            given["length_config"] = LengthConfig.parse(given["length_config"])
        return given


_INIT_PARAMETERS = (
    "model",
    "device",
    "precision",
    "top_k",
    "score_threshold",
    "max_seq_length",
    "stride",
    "max_batch_size",
    "no_answer",
    "overlap_threshold",
    "max_answer_length",
    "budget",
    "latency_ms",
    "length_config",
)
