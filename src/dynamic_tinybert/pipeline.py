"""`QuestionAnswerer`: the user-facing callable, shaped like the transformers question-answering pipeline.

    qa = QuestionAnswerer.from_pretrained("Intel/dynamic_tinybert")
    qa(question="Where do I live?", context="My name is Wolfgang and I live in Berlin")
    # -> {"score": float, "start": 34, "end": 40, "answer": "Berlin"} for a model trained on SQuAD

Same inputs (one pair, lists, dicts), options, defaults and output dicts as that pipeline; on top, a
`length_config` per call trades accuracy for speed without reloading anything.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from . import checkpoint
from .decoding import decode_answers
from .engines import Engine, TorchEngine, build_engine, choose_engine
from .explain import Explanation, describe, trace_window
from .features import Window, batches, make_windows
from .frontier import BudgetError, Frontier, load_frontier
from .length_config import LengthConfig
from .model import BertForQuestionAnswering
from .options import AnswerOptions
from .reading import (
    MAX_CHARACTERS,
    MAX_DOCUMENTS,
    Document,
    ScoreCalibration,
    check_reading_options,
    load_score_calibration,
    prepare_documents,
    rank_answers,
)


@dataclass
class Reading:
    """A `read` between tokenising and ranking: its documents, their windows and its options."""

    documents: int  # how many were given (answers name positions among them)
    kept: list[Document]  # those read, in order
    skipped: list[dict]  # notes on those left out (empty)
    windows: list[Window]  # window.example: position in `kept`
    opts: AnswerOptions
    overlap_threshold: float | None


@dataclass
class Answers:
    """Everything one run produced: the answers of each example and the windows the model saw."""

    answers: list[list[dict]]  # per example, best first
    windows: list[Window]


class QuestionAnswerer:
    """Extractive question answering with a length-adaptive BERT.

    Build it with `from_pretrained` (a directory in the Hugging Face layout, or a hub id); call it like the
    transformers pipeline. Defaults given here (`length_config` or a `budget`, `batch_size`, ...) apply to
    every call unless the call overrides them. A `budget` or `latency_ms` picks the most accurate length
    configuration within it from the model's accuracy/cost frontier (`pareto.json`, see `dtb search`).
    """

    def __init__(
        self,
        model: BertForQuestionAnswering,
        tokenizer: Tokenizer,
        frontier: Frontier | None = None,
        score_calibration: ScoreCalibration | None = None,
        engine: Engine | None = None,
        **defaults,
    ) -> None:
        self.model = model.eval()
        self.engine = engine or TorchEngine(self.model)  # what computes the logits; `model` traces and explains
        self.tokenizer = tokenizer
        self.frontier = frontier
        self.score_calibration = score_calibration or ScoreCalibration()  # for `read`: scores across documents
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self._tokenizing = threading.Lock()  # making windows sets the tokenizer's truncation: one caller at a time
        self.defaults = AnswerOptions(**defaults)
        checked = self.options()  # a bad default fails here, not at the first call
        if checked.budget is not None or checked.latency_ms is not None:
            self._frontier().check(budget=checked.budget, latency_ms=checked.latency_ms)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike | None = None,
        revision: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        engine: str = "auto",
        **defaults,
    ) -> QuestionAnswerer:
        """Load a checkpoint directory or Hugging Face Hub id (see `checkpoint.resolve`); None: the shipped model.

        `precision` "bf16" or "int8" runs the encoder's Linear layers in that precision on CPU. `engine` "torch"
        runs the model eagerly, "onnxruntime" exports it to ONNX Runtime (CPU, fp32 or int8), "auto" picks
        ONNX Runtime for int8 on the CPU where it is installed (see `engines`).
        """
        engine = choose_engine(engine, precision, device)  # a bad choice fails before the model loads
        directory = checkpoint.resolve(path_or_id, revision)
        runner, model = build_engine(checkpoint.load_model(directory).to(device), engine, precision)
        return cls(
            model,
            checkpoint.load_tokenizer(directory),
            load_frontier(directory),
            load_score_calibration(directory),
            engine=runner,
            **defaults,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, *args, question=None, context=None, **options) -> dict | list:
        """Answer one (question, context) pair, lists of them, or dicts with those keys.

        Returns one answer dict for one pair (a list of dicts when top_k > 1), a list of those for many.
        """
        questions, contexts, single = _normalise_inputs(args, question, context)
        run = self.run(questions, contexts, **options)
        results = [answers[0] if len(answers) == 1 else answers for answers in run.answers]
        return results[0] if single else results

    def run(
        self,
        questions: Sequence[str],
        contexts: Sequence[str],
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> Answers:
        """Answer every pair; `progress(n)` is told each time n more windows have gone through the model."""
        opts = self.options(**options)
        windows = self._windows(questions, contexts, opts)
        return Answers(self._answer(windows, contexts, opts, progress), windows)

    def read(self, question: str, documents: Sequence, **options) -> dict:
        """Answer one question from many documents: the `top_k` (5) answers across all of them, best first.

        `documents`: strings, or {"id", "text", "meta"} dicts (a string's id is its position). Returns
        {"answers": [{"answer", "score", "margin", "document_id", "document_index", "start", "end", "window"}],
        "no_answer", "skipped", "length_config"}: "document_index" is a position in `documents`, offsets
        index the document's text, "window" is the index and character range of the window the answer came
        from, a score is the calibrated probability that the answer is right, comparable across documents
        (`reading.py`), "no_answer" the probability that none is, "skipped" the empty documents left out.
        Answers of one document overlapping by more than `overlap_threshold` (0.01) of the shorter are kept
        once (None: only identical ones); `max_documents` and `max_characters` bound the work (`start_read`
        holds their defaults). The answering
        options (`budget`, `length_config`, `max_answer_len`, windows, `batch_size`) apply as to one
        context; `latency_ms` bounds the whole read, all documents' windows together.
        """
        reading = self.start_read(question, documents, **options)
        length_config = self.length_config_for(reading.opts, sum(w.length for w in reading.windows))
        start_logits, end_logits = self.logits(reading.windows, length_config, reading.opts.batch_size)
        return self.finish_read(reading, start_logits, end_logits, length_config)

    def start_read(
        self,
        question: str,
        documents: Sequence,
        top_k: int = 5,
        overlap_threshold: float | None = 0.01,
        max_documents: int = MAX_DOCUMENTS,
        max_characters: int = MAX_CHARACTERS,
        **options,
    ) -> Reading:
        """`read` up to the model: the documents checked and windowed (a server runs their logits itself)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string")
        check_reading_options(options, overlap_threshold)
        opts = self.options(top_k=top_k, **options)
        kept, skipped = prepare_documents(documents, max_documents, max_characters)
        windows = self.document_windows(question, kept, **options) if kept else []
        return Reading(len(documents), kept, skipped, windows, opts, overlap_threshold)

    def finish_read(
        self, reading: Reading, start_logits: Sequence, end_logits: Sequence, length_config: LengthConfig | None
    ) -> dict:
        """`read` after the model: answers ranked across the documents from their windows' logits."""
        result = {"answers": [], "no_answer": 1.0}
        if reading.windows:
            result = rank_answers(
                reading.windows,
                start_logits,
                end_logits,
                reading.kept,
                top_k=reading.opts.top_k,
                max_answer_len=reading.opts.max_answer_len,
                align_to_words=reading.opts.align_to_words,
                calibration=self.score_calibration,
                overlap_threshold=reading.overlap_threshold,
            )
            left_out = {note["document_index"] for note in reading.skipped}
            positions = [i for i in range(reading.documents) if i not in left_out]
            for answer in result["answers"]:  # rank_answers counts the documents it was given
                answer["document_index"] = positions[answer["document_index"]]
        config = None if length_config is None else str(length_config)
        return {**result, "skipped": reading.skipped, "length_config": config}

    def document_windows(self, question: str, documents: Sequence[Document], **options) -> list[Window]:
        """The question beside each document, windowed as one context is (window.example: the document's
        position in `documents`): `rank_answers` takes these windows with their logits."""
        return self.windows([question] * len(documents), [d.text for d in documents], **options)

    def windows(self, questions: Sequence[str], contexts: Sequence[str], **options) -> list[Window]:
        """Tokenise every pair into model windows: done once, then `answer` under any length config."""
        return self._windows(questions, contexts, self.options(**options))

    def answer(
        self,
        windows: Sequence[Window],
        contexts: Sequence[str],
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> list[list[dict]]:
        """The answers of each context from windows that `windows` made of it, best first."""
        return self._answer(windows, contexts, self.options(**options), progress)

    def _windows(self, questions: Sequence[str], contexts: Sequence[str], opts: AnswerOptions) -> list[Window]:
        _check_texts(questions, contexts)
        with self._tokenizing:
            return make_windows(
                self.tokenizer, questions, contexts, opts.max_seq_len, opts.doc_stride, opts.max_question_len
            )

    def _answer(
        self,
        windows: Sequence[Window],
        contexts: Sequence[str],
        opts: AnswerOptions,
        progress: Callable[[int], None] | None,
    ) -> list[list[dict]]:
        length_config = self.length_config_for(opts, tokens_per_question(windows, len(contexts)))
        start_logits, end_logits = self.logits(windows, length_config, opts.batch_size, progress)
        return self.decode(windows, contexts, start_logits, end_logits, opts)

    def decode(
        self,
        windows: Sequence[Window],
        contexts: Sequence[str],
        start_logits: Sequence[np.ndarray],
        end_logits: Sequence[np.ndarray],
        opts: AnswerOptions,
    ) -> list[list[dict]]:
        """The answers of each context, best first, from its windows' logits however they were computed
        (here, or by a server that batched them with other requests' windows)."""
        per_example: list[list[int]] = [[] for _ in contexts]
        for i, window in enumerate(windows):
            per_example[window.example].append(i)
        return [
            decode_answers(
                contexts[example],
                [windows[i] for i in indices],
                [start_logits[i] for i in indices],
                [end_logits[i] for i in indices],
                top_k=opts.top_k,
                max_answer_len=opts.max_answer_len,
                handle_impossible_answer=opts.handle_impossible_answer,
                align_to_words=opts.align_to_words,
                null_threshold=opts.null_threshold,
            )
            for example, indices in enumerate(per_example)
        ]

    def logits(
        self,
        windows: Sequence[Window],
        length_config: LengthConfig | None,
        batch_size: int,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list, list]:
        """Start and end logits (numpy, one array per window, unpadded) in window order.

        They are written into one array allocated up front: small arrays kept from every batch would pin
        the heap between the batches' large freed activations, and memory would grow with every batch.
        """
        longest = max((w.length for w in windows), default=0)
        logits = np.zeros((2, len(windows), longest), dtype=np.float32)  # start, end
        index = {id(w): i for i, w in enumerate(windows)}
        for batch in batches(windows, batch_size, self.pad_id):
            both = self.engine.logits(batch, length_config)  # (2, B, T)
            rows = [index[id(window)] for window in batch.windows]
            logits[:, rows, : both.shape[2]] = both
            if progress is not None:
                progress(len(batch.windows))
        return (
            [logits[0, i, : w.length] for i, w in enumerate(windows)],
            [logits[1, i, : w.length] for i, w in enumerate(windows)],
        )

    def explain(self, question: str, context: str, **options) -> Explanation:
        """Answer one question as a call with these options does, each window run alone with the model's trace,
        and say what each layer kept in the window that holds the best answer (see `explain`). The trace needs
        the eager model: under the onnxruntime engine that is the fp32 one."""
        opts = self.options(**options)
        windows = self._windows([question], [context], opts)
        length_config = self.length_config_for(opts, tokens_per_question(windows, 1))
        runs = [trace_window(self.model, window, length_config, self.pad_id) for window in windows]
        starts, ends = [r.start_logits for r in runs], [r.end_logits for r in runs]
        answers = self.decode(windows, [context], starts, ends, opts)[0]
        return describe(self.model.config, windows, runs, answers, length_config)

    def options(self, **options) -> AnswerOptions:
        """The options a call with these runs with: over the defaults, window defaults filled in, checked.

        A call's length choice (length_config, budget or latency_ms, even None) replaces the default one.
        A budget stays a budget here: `length_config_for` turns it into a configuration once the call's
        windows, and so its length, are known.
        """
        config = self.model.config
        opts = self.defaults.updated(**options).with_window_defaults(config.max_position_embeddings)
        if opts.max_seq_len > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len ({opts.max_seq_len}) exceeds the model's {config.max_position_embeddings} positions"
            )
        if opts.doc_stride >= opts.max_seq_len:
            raise ValueError(f"doc_stride ({opts.doc_stride}) must be smaller than max_seq_len ({opts.max_seq_len})")
        if opts.length_config is not None:
            opts.length_config.check_fits(config.num_hidden_layers, opts.max_seq_len)
        return opts

    def length_config_for(
        self, options: AnswerOptions, tokens_per_question: float | None = None
    ) -> LengthConfig | None:
        """The length configuration a call runs: its own, or the frontier's most accurate within its budget.

        A latency budget is met for questions of `tokens_per_question` real tokens (all their windows;
        None: as long as those the latencies were measured on). None: full length.
        """
        if options.budget is None and options.latency_ms is None:
            return options.length_config
        point = self._frontier().choose(
            budget=options.budget, latency_ms=options.latency_ms, tokens=tokens_per_question
        )
        point.length_config.check_fits(self.model.config.num_hidden_layers, options.max_seq_len)
        return point.length_config

    def _frontier(self) -> Frontier:
        if self.frontier is None:
            raise BudgetError(
                "this model has no accuracy/cost frontier (pareto.json) to choose a budget from; "
                "run `dtb search` on it first"
            )
        return self.frontier


def tokens_per_question(windows: Sequence[Window], questions: int) -> float:
    """Real tokens per question over all its windows: the length a latency budget is predicted at."""
    return sum(w.length for w in windows) / max(1, questions)


def _normalise_inputs(args: tuple, question, context) -> tuple[list[str], list[str], bool]:
    """Accept the pipeline's input forms; return questions, contexts and whether one pair was given."""
    if args and (question is not None or context is not None):
        raise ValueError("give the inputs either positionally or as question=/context=, not both")
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        question, context = args
    elif len(args) == 1:
        items = args[0]
        single = isinstance(items, dict)
        items = [items] if single else items
        if not isinstance(items, list | tuple) or not all(isinstance(i, dict) for i in items):
            raise ValueError("positional input must be a dict with 'question' and 'context', or a list of them")
        for i, item in enumerate(items):
            for key in ("question", "context"):
                if key not in item:
                    raise ValueError(f"input {i} has no {key!r} key; expected {{'question': ..., 'context': ...}}")
        return [i["question"] for i in items], [i["context"] for i in items], single
    elif args:
        raise ValueError(f"expected (question, context), a dict or a list of dicts; got {len(args)} positional values")
    if question is None or context is None:
        raise ValueError("both question and context are required")
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str | list | tuple):
            raise ValueError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    single = isinstance(question, str) and isinstance(context, str)
    questions = [question] if isinstance(question, str) else list(question)
    contexts = [context] if isinstance(context, str) else list(context)
    if len(contexts) == 1 and len(questions) > 1:
        contexts = contexts * len(questions)  # several questions about one context
    return questions, contexts, single


def _check_texts(questions: Sequence, contexts: Sequence) -> None:
    if len(questions) != len(contexts):
        raise ValueError(f"got {len(questions)} questions but {len(contexts)} contexts")
    for name, texts in (("question", questions), ("context", contexts)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name} {i} must be a string, got {type(text).__name__}")
            if not text.strip():
                raise ValueError(f"{name} {i} is empty")
