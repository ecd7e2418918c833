"""What the training loop minimises. The stages differ only here.

An objective turns a batch into one or more forward passes, each a callable returning its loss; the loop
runs them in order and back-propagates each (so LengthDrop's sub-models never hold their graphs at once):

- `SpanLoss`: cross-entropy on the answer's start and end (fine-tuning; how a teacher is made).
- `PredictionDistillation`: soft cross-entropy against a teacher's start/end distributions (TinyBERT PD).
- `IntermediateDistillation`: MSE between hidden states (through a learned fit layer when widths differ)
  and between attentions, layer i of the student against layer i * T/S of the teacher (TinyBERT ID).
- `LengthDrop`: any of the above on the full model, plus sandwich sub-models (the smallest and
  `num_sandwich` random length configurations, with LayerDrop) that learn from the full model's detached
  predictions (inplace distillation, Length-Adaptive Transformer).
- `TokenScoring`: the token scorers of a model with learned token selection, the model itself frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..length_config import LengthConfig
from ..model import BertForQuestionAnswering, SpanLogits
from .data import TrainBatch


@dataclass
class PassResult:
    loss: torch.Tensor  # scalar, already weighted among the batch's passes
    logits: SpanLogits


Pass = Callable[[], PassResult]


class Objective:
    """A loss plugged into the training loop.

    `trainable` holds weights the objective itself learns (a fit layer); the loop optimises and saves them.
    """

    trainable: nn.Module | None = None

    def to(self, device: torch.device) -> None:
        """Move what the objective owns (a teacher, a fit layer) to the training device."""
        if self.trainable is not None:
            self.trainable.to(device)

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        raise NotImplementedError


def run(model: nn.Module, batch: TrainBatch, **kwargs) -> SpanLogits:
    return model(batch.input_ids, batch.attention_mask, batch.token_type_ids, **kwargs)


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log-probabilities over the real positions of each row; padding gets none of the mass."""
    return (logits.float() / temperature).masked_fill(~mask, -1e4).log_softmax(dim=-1)


class SpanLoss(Objective):
    """Cross-entropy of the labelled start and end positions ([CLS] for no answer in the window)."""

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        def full() -> PassResult:
            out = run(model, batch)
            mask = batch.attention_mask.bool()
            loss = (
                F.nll_loss(masked_log_softmax(out.start_logits, mask), batch.start_positions)
                + F.nll_loss(masked_log_softmax(out.end_logits, mask), batch.end_positions)
            ) / 2
            return PassResult(loss, out)

        return [full]


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float):
    """Cross-entropy of the student's distribution against the teacher's, averaged over the batch."""
    target = masked_log_softmax(teacher, mask, temperature).exp()
    return -(target * masked_log_softmax(student, mask, temperature)).sum(dim=-1).mean()


class PredictionDistillation(Objective):
    """Match the teacher's start and end distributions (soft cross-entropy at `temperature`)."""

    def __init__(self, teacher: BertForQuestionAnswering, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher = teacher.eval()  # run under no_grad; its weights are not touched
        self.temperature = temperature

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.teacher.to(device)

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        def full() -> PassResult:
            with torch.no_grad():
                target = run(self.teacher, batch)
            out = run(model, batch)
            mask = batch.attention_mask.bool()
            loss = (
                soft_cross_entropy(out.start_logits, target.start_logits, mask, self.temperature)
                + soft_cross_entropy(out.end_logits, target.end_logits, mask, self.temperature)
            ) / 2
            return PassResult(loss, out)

        return [full]


class IntermediateDistillation(Objective):
    """TinyBERT's intermediate-layer distillation: hidden states and attentions, layer by layer.

    Student layer i (1-based) learns from teacher layer round(i * T / S); the embeddings from the teacher's
    embeddings. `attention` compares pre-softmax "scores" (TinyBERT: masked entries count as 0) or
    "probs" (Intel's code). Attention needs equal head counts; otherwise the heads are averaged first.
    """

    def __init__(self, teacher: BertForQuestionAnswering, student: BertForQuestionAnswering, attention: str = "probs"):
        if attention not in ("scores", "probs"):
            raise ValueError(f"attention must be 'scores' or 'probs', got {attention!r}")
        self.teacher = teacher.eval()  # run under no_grad; its weights are not touched
        self.attention = attention
        s, t = student.config, teacher.config
        self.layer_map = [round(i * t.num_hidden_layers / s.num_hidden_layers) for i in range(s.num_hidden_layers + 1)]
        self.trainable = (
            nn.Linear(s.hidden_size, t.hidden_size) if s.hidden_size != t.hidden_size else None
        )  # W_fit, TinyBERT's fit_dense

    def to(self, device: torch.device) -> None:
        super().to(device)
        self.teacher.to(device)

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        def full() -> PassResult:
            with torch.no_grad():
                target = run(self.teacher, batch, trace=True).trace
            out = run(model, batch, trace=True)
            mask = batch.attention_mask.bool()
            fit = self.trainable if self.trainable is not None else nn.Identity()
            hidden_loss = sum(
                masked_mse(fit(out.trace.hidden_states[i]), target.hidden_states[j], mask[..., None])
                for i, j in enumerate(self.layer_map)
            )
            pair_mask = (mask[:, :, None] & mask[:, None, :])[:, None]  # (B, 1, T, T) real query-key pairs
            attention_loss = sum(
                masked_mse(
                    self.comparable(out.trace.attention_scores[i - 1], target.attention_scores[j - 1]),
                    self.comparable(target.attention_scores[j - 1], out.trace.attention_scores[i - 1]),
                    pair_mask,
                )
                for i, j in enumerate(self.layer_map)
                if i > 0
            )
            return PassResult(hidden_loss + attention_loss, out)

        return [full]

    def comparable(self, scores: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Scores or probabilities, head-averaged if the other model has another head count."""
        x = scores.float().softmax(dim=-1) if self.attention == "probs" else scores.float().clamp(min=-100.0)
        if self.attention == "scores":
            x = x.masked_fill(x <= -100.0, 0.0)  # TinyBERT: masked entries compare as 0
        return x.mean(dim=1, keepdim=True) if scores.size(1) != other.size(1) else x


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries `mask` (broadcastable) selects."""
    mask = mask.expand_as(a)
    return ((a - b.float()) ** 2)[mask].mean()


class LengthDrop(Objective):
    """LengthDrop with the sandwich rule and inplace distillation (Kim & Cho 2021).

    Per batch: the full model trained by `base`; the smallest sub-model (every layer keeps (1 - p) of the
    previous layer's tokens); and `num_sandwich` random ones (each layer keeps a uniform fraction in
    [1 - p, 1] of the previous layer's, and skips with probability `layer_drop`). Sub-models learn from the
    full model's detached distributions by KL divergence; the passes' losses are averaged. With
    `protect_question` the sub-models keep every question token ("+q" configs), as the frontier of a model
    searched with --protect-question will run them.

    The KL covers every position, as in LAT: a dropped token's restored (stale) state must score as the full
    model's final one does, which is how a sub-model can still answer with a token it dropped. With
    `fresh_only` it covers only the tokens that leave the sub-model's last layer (the full model's
    distribution renormalised there): for a model whose learned scorers keep the answer, matching the stale
    states only pulls the early layers away from what the full model needs (docs/experiments/length-drop-fresh-only.md).
    """

    def __init__(
        self,
        base: Objective,
        ratio_bound: float = 0.2,
        num_sandwich: int = 2,
        layer_drop: float = 0.2,
        seed: int = 0,
        protect_question: bool = False,
        fresh_only: bool = False,
    ):
        if not 0 < ratio_bound < 1:
            raise ValueError(f"length_drop_ratio_bound must be in (0, 1), got {ratio_bound}")
        if num_sandwich < 0:
            raise ValueError(f"num_sandwich must be >= 0, got {num_sandwich}")
        if not 0 <= layer_drop < 1:
            raise ValueError(f"layer_drop must be in [0, 1), got {layer_drop}")
        self.base, self.ratio_bound, self.num_sandwich, self.layer_drop, self.seed = (
            base,
            ratio_bound,
            num_sandwich,
            layer_drop,
            seed,
        )
        self.protect_question, self.fresh_only = protect_question, fresh_only
        self.trainable = base.trainable

    def sub_models(self, num_layers: int, step: int) -> list[tuple[LengthConfig, frozenset[int]]]:
        """The smallest and the random sandwich sub-models of this step (seeded by step: resumable)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        smallest = [(1 - self.ratio_bound) ** (i + 1) for i in range(num_layers)]
        chosen = [(LengthConfig.ratios(smallest, self.protect_question), frozenset())]
        for _ in range(self.num_sandwich):
            factors = 1 - self.ratio_bound * torch.rand(num_layers, generator=generator, dtype=torch.float64)
            ratios = torch.cumprod(factors, dim=0).clamp(min=1e-6).tolist()
            skipped = torch.rand(num_layers, generator=generator) < self.layer_drop
            config = LengthConfig.ratios(ratios, self.protect_question)
            chosen.append((config, frozenset(torch.nonzero(skipped).flatten().tolist())))
        return chosen

    def to(self, device: torch.device) -> None:
        self.base.to(device)

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        [full_pass] = self.base.passes(model, batch, step)
        num_layers = unwrap(model).config.num_hidden_layers
        weight = 1.0 / (1 + self.num_sandwich + 1)
        teacher: dict[str, torch.Tensor] = {}
        mask = batch.attention_mask.bool()

        def full() -> PassResult:
            result = full_pass()
            teacher["start"] = result.logits.start_logits.detach()
            teacher["end"] = result.logits.end_logits.detach()
            return PassResult(result.loss * weight, result.logits)

        def sub(config: LengthConfig, skipped: frozenset[int]) -> Pass:
            def forward() -> PassResult:
                out = run(model, batch, length_config=config, skip_layers=skipped)
                matched = mask & out.fresh if self.fresh_only and out.fresh is not None else mask
                loss = (
                    sum(
                        kl_divergence(masked_log_softmax(teacher[side], matched), masked_log_softmax(logits, matched))
                        for side, logits in (("start", out.start_logits), ("end", out.end_logits))
                    )
                    / 2
                )
                return PassResult(loss * weight, out)

            return forward

        return [full] + [sub(config, skipped) for config, skipped in self.sub_models(num_layers, step)]


class TokenScoring(Objective):
    """Teach each layer's token scorer which tokens the model's own answer needs; the model stays frozen.

    One full-length pass records every layer's token scores. The target is where the model's answer lies:
    each context token's start and end probabilities plus the probability that it falls inside the answer
    span (P(start <= t) * P(end >= t)), normalised over the context. Each layer's scores learn it by
    listwise cross-entropy, so ranking by score keeps the likely answers and what lies between their ends.
    [CLS] and question tokens do not compete: [CLS] is always kept, question tokens by "+q" configs.
    """

    def passes(self, model: nn.Module, batch: TrainBatch, step: int) -> list[Pass]:
        if unwrap(model).config.token_selection != "learned":
            raise ValueError(
                "token scoring trains a model with token_selection 'learned' (see frozen_with_token_scorers)"
            )

        def full() -> PassResult:
            model.eval()  # the frozen model answers as at inference, without dropout noise
            out = run(model, batch, trace=True)
            mask = batch.attention_mask.bool()
            context = mask & (batch.token_type_ids == 1)
            target = answer_coverage(out.start_logits.detach(), out.end_logits.detach(), mask, context)
            losses = []
            layer_inputs = zip(out.trace.token_scores, out.trace.positions[:-1], out.trace.masks[:-1], strict=True)
            for scores, positions, kept in layer_inputs:
                original = positions.clamp(max=mask.size(1) - 1)  # empty slots point past the end
                competing = kept & context.gather(1, original)
                log_probs = masked_log_softmax(scores, competing)
                losses.append(-(target.gather(1, original) * log_probs).sum(dim=-1).mean())
            return PassResult(torch.stack(losses).mean(), out)

        return [full]


def answer_coverage(
    start_logits: torch.Tensor, end_logits: torch.Tensor, mask: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """How much of the predicted answer each context token (B, T) carries, as a distribution over the context."""
    start = masked_log_softmax(start_logits, mask).exp()
    end = masked_log_softmax(end_logits, mask).exp()
    inside = start.cumsum(dim=1) * end.flip(1).cumsum(dim=1).flip(1)
    coverage = (start + end + inside) * context
    return coverage / coverage.sum(dim=1, keepdim=True).clamp(min=1e-9)


def kl_divergence(target_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(target || model), summed over positions, averaged over the batch."""
    return F.kl_div(log_probs, target_log_probs, log_target=True, reduction="batchmean")


def unwrap(model: nn.Module) -> BertForQuestionAnswering:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
