"""`QuestionAnswerer`: the user-facing callable, shaped like the transformers question-answering pipeline.

    qa = QuestionAnswerer.from_pretrained("Intel/dynamic_tinybert")
    qa(question="Where do I live?", context="My name is Wolfgang and I live in Berlin")
    # -> {"score": float, "start": 34, "end": 40, "answer": "Berlin"} for a model trained on SQuAD

Same inputs (one pair, lists, dicts), options, defaults and output dicts as that pipeline; on top, a
`length_config` per call trades accuracy for speed without reloading anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from tokenizers import Tokenizer

from . import checkpoint
from .allocator import keep_freed_memory
from .decoding import decode_answers
from .features import Window, batches, make_windows, window_defaults
from .frontier import BudgetError, Frontier, load_frontier
from .latency import measure_latencies
from .length_config import LengthConfig
from .model import BertForQuestionAnswering
from .precision import with_precision


@dataclass(frozen=True)
class AnswerOptions:
    """Per-call settings, defaults as in the transformers pipeline."""

    top_k: int = 1
    doc_stride: int | None = None  # overlap between windows; None: min(max_seq_len // 2, 128)
    max_answer_len: int = 15
    max_seq_len: int | None = None  # None: min(the model's positions, 384)
    max_question_len: int = 64
    handle_impossible_answer: bool = False
    align_to_words: bool = True
    null_threshold: float = 0.0
    length_config: LengthConfig | None = None
    budget: float | None = None  # fraction of the full model's MACs; picks from the model's frontier
    latency_ms: float | None = None  # per question on this machine; picks from the model's frontier
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("top_k", "max_answer_len", "max_seq_len", "max_question_len", "batch_size"):
            value = getattr(self, name)
            if name == "max_seq_len" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.doc_stride is not None and (not isinstance(self.doc_stride, int) or self.doc_stride < 0):
            raise ValueError(f"doc_stride must be an integer >= 0, got {self.doc_stride!r}")
        if self.length_config is not None and not isinstance(self.length_config, LengthConfig):
            raise ValueError(f"length_config must be a LengthConfig, got {type(self.length_config).__name__}")
        chosen = [n for n in ("length_config", "budget", "latency_ms") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give only one of length_config, budget and latency_ms, got {' and '.join(chosen)}")

    def resolved(self, max_positions: int) -> AnswerOptions:
        """The options with the model-dependent defaults filled in."""
        max_seq_len, doc_stride = window_defaults(max_positions, self.max_seq_len, self.doc_stride)
        return replace(self, max_seq_len=max_seq_len, doc_stride=doc_stride)


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
        self, model: BertForQuestionAnswering, tokenizer: Tokenizer, frontier: Frontier | None = None, **defaults
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.frontier = frontier
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        self.defaults = AnswerOptions(**defaults)
        # fail at construction, not at the first call; a latency budget only if no request could meet it
        self._resolve(self.defaults, tokens_per_question=0.0)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike | None = None,
        revision: str | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        **defaults,
    ) -> QuestionAnswerer:
        """Load a checkpoint directory or Hugging Face Hub id (see `checkpoint.resolve`); None: the shipped model.

        `precision` "bf16" or "int8" runs the encoder's Linear layers in that precision on CPU. On glibc the
        process keeps freed memory for reuse (see `allocator`), which spares every call its page faults.
        """
        keep_freed_memory()
        directory = checkpoint.resolve(path_or_id, revision)
        model = with_precision(checkpoint.load_model(directory).to(device), precision)
        return cls(model, checkpoint.load_tokenizer(directory), load_frontier(directory), **defaults)

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
        windows = self.windows(questions, contexts, **options)
        return Answers(self.answer(windows, contexts, progress, **options), windows)

    def windows(self, questions: Sequence[str], contexts: Sequence[str], **options) -> list[Window]:
        """Tokenise every pair into model windows: done once, then `answer` under any length config."""
        _check_texts(questions, contexts)
        opts = self.options(tokens_per_question=0.0, **options)  # the length config is chosen in `answer`
        return make_windows(
            self.tokenizer, questions, contexts, opts.max_seq_len, opts.doc_stride, opts.max_question_len
        )

    def answer(
        self,
        windows: Sequence[Window],
        contexts: Sequence[str],
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> list[list[dict]]:
        """The answers of each context from windows that `windows` made of it, best first."""
        tokens_per_question = sum(w.length for w in windows) / max(1, len(contexts))
        opts = self.options(tokens_per_question=tokens_per_question, **options)
        start_logits, end_logits = self.logits(windows, opts.length_config, opts.batch_size, progress)
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

    @torch.inference_mode()
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
            out = self.model(
                batch.input_ids.to(self.device),
                batch.attention_mask.to(self.device),
                batch.token_type_ids.to(self.device),
                length_config=length_config,
            )
            both = torch.stack([out.start_logits, out.end_logits]).float().cpu().numpy()  # (2, B, T)
            rows = [index[id(window)] for window in batch.windows]
            logits[:, rows, : both.shape[2]] = both
            if progress is not None:
                progress(len(batch.windows))
        return (
            [logits[0, i, : w.length] for i, w in enumerate(windows)],
            [logits[1, i, : w.length] for i, w in enumerate(windows)],
        )

    def length_config_for(
        self, budget: float | None = None, latency_ms: float | None = None, tokens: float | None = None
    ) -> LengthConfig:
        """The most accurate configuration of the model's frontier within a MACs fraction or a latency.

        A latency is predicted for questions of `tokens` real tokens (None: as long as the calibration's).
        """
        if self.frontier is None:
            raise BudgetError(
                "this model has no accuracy/cost frontier (pareto.json) to choose a budget from; "
                "run `dtb search` on it first"
            )
        return self.frontier.choose(budget=budget, latency_ms=latency_ms, tokens=tokens).length_config

    def calibrate(
        self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 1, repeats: int = 3
    ) -> Frontier:
        """Measure every frontier point's latency on this machine, so that `latency_ms` budgets hold here.

        Latencies in `pareto.json` were measured where the search ran; this replaces them (in memory; the
        caller may save the returned frontier) with ms per question on these inputs at this batch size, and
        how that grows per token. Give questions of varied lengths: the slope is fitted across them.
        """
        if self.frontier is None:
            raise BudgetError("this model has no accuracy/cost frontier (pareto.json) to calibrate")
        self.frontier = self.frontier.with_latencies(
            lambda configs: measure_latencies(self, questions, contexts, configs, batch_size, repeats), batch_size
        )
        return self.frontier

    def options(self, tokens_per_question: float | None = None, **options) -> AnswerOptions:
        """The options a call with these would run with: over the defaults, checked, a budget resolved.

        A call's length choice (length_config, budget or latency_ms, even None) replaces the default one.
        A latency budget is met for questions of `tokens_per_question` real tokens (None: typical ones).
        """
        if options.keys() & {"length_config", "budget", "latency_ms"}:
            options = {"length_config": None, "budget": None, "latency_ms": None, **options}
        return self._resolve(replace(self.defaults, **options), tokens_per_question)

    def _resolve(self, opts: AnswerOptions, tokens_per_question: float | None = None) -> AnswerOptions:
        """Fill in model-dependent defaults, turn a budget into a length config, check against the model."""
        config = self.model.config
        opts = opts.resolved(config.max_position_embeddings)
        if opts.budget is not None or opts.latency_ms is not None:
            chosen = self.length_config_for(opts.budget, opts.latency_ms, tokens_per_question)
            opts = replace(opts, length_config=chosen, budget=None, latency_ms=None)
        if opts.max_seq_len > config.max_position_embeddings:
            raise ValueError(
                f"max_seq_len ({opts.max_seq_len}) exceeds the model's {config.max_position_embeddings} positions"
            )
        if opts.doc_stride >= opts.max_seq_len:
            raise ValueError(f"doc_stride ({opts.doc_stride}) must be smaller than max_seq_len ({opts.max_seq_len})")
        if opts.length_config is not None:
            opts.length_config.check_fits(config.num_hidden_layers, opts.max_seq_len)
        return opts


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
