"""Prune Once for All: sparse encoder weights by magnitude on Zhu & Gupta's cubic schedule, and checking them.

Every Linear layer inside the encoder (query, key, value, attention output, intermediate and output dense)
is pruned to the same sparsity; the embeddings and the span head stay dense. A "1x4" block is 4
consecutive output rows of `Linear.weight[out, in]` that share one input column, the pattern Intel's
sparse int8 kernels exploit; "unstructured" prunes single weights. The masks live beside the training
loop and are re-applied after every optimiser step, so a pruned weight is exactly zero in every checkpoint:
a sparse model is a plain BERT checkpoint with zeros, and its masks are its zeros (`W != 0`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model import BertForQuestionAnswering, is_token_scorer

# Output rows per block of each pattern: a block is `rows` consecutive output rows of one input column.
PATTERNS = {"1x4": 4, "unstructured": 1}


@dataclass(frozen=True)
class PruningSchedule:
    """Zhu & Gupta's gradual pruning: s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3 with s_i = 0.

    `target` (s_f) is reached at optimiser step `end` (t0 + n dt, t0 = `start`); masks are recomputed
    every `every` steps (dt) in between, and at `end`. After `end` they stay as they are.
    """

    target: float
    end: int
    pattern: str = "1x4"
    start: int = 0
    every: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError(f"target sparsity must be in (0, 1), got {self.target}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pruning pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}")
        if self.start < 0:
            raise ValueError(f"pruning start step must be >= 0, got {self.start}")
        if self.end <= self.start:
            raise ValueError(f"pruning must end after it starts, got start {self.start} and end {self.end}")
        if self.every < 1:
            raise ValueError(f"pruning interval must be >= 1 step, got {self.every}")

    def sparsity(self, step: int) -> float:
        """The fraction of each encoder weight matrix pruned after `step` optimiser steps."""
        progress = min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.target * (1 - (1 - progress) ** 3)

    def updates_at(self, step: int) -> bool:
        return self.start <= step <= self.end and ((step - self.start) % self.every == 0 or step == self.end)


def encoder_linears(model: BertForQuestionAnswering) -> dict[str, nn.Linear]:
    """The Linear layers pruning touches, by weight name prefix: all of the encoder's but its token scorers
    (one output row each: no 1x4 blocks, and next to no MACs)."""
    return {
        f"bert.encoder.{name}": module
        for name, module in model.bert.encoder.named_modules()
        if isinstance(module, nn.Linear) and not is_token_scorer(name)
    }


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str) -> torch.Tensor:
    """A keep-mask (bool, weight's shape) without the round(sparsity * blocks) blocks of least mean |w|."""
    rows = PATTERNS[pattern]
    out_features, in_features = weight.shape
    scores = weight.detach().abs().view(out_features // rows, rows, in_features).mean(dim=1)  # (out/rows, in)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=weight.device)
    pruned = round(sparsity * scores.numel())
    keep[scores.flatten().argsort(stable=True)[:pruned]] = False  # zero blocks (pruned before) come first
    return keep.view(-1, 1, in_features).expand(-1, rows, -1).reshape(out_features, in_features)


class Pruner:
    """The encoder's sparsity masks during training: recomputed on a schedule, re-applied after every step.

    The masks start as the model's zeros (`W != 0`) and only ever shrink, so a sparse model stays at least
    as sparse; without a schedule that is all they do (fine-tuning with a locked sparsity pattern). Built
    from the model's weights, a resumed run recovers exactly the masks its checkpoint was trained with.
    """

    def __init__(self, model: BertForQuestionAnswering, schedule: PruningSchedule | None = None):
        self.linears = encoder_linears(model)
        self.schedule = schedule
        if schedule is not None:
            rows = PATTERNS[schedule.pattern]
            for name, linear in self.linears.items():
                if linear.out_features % rows:
                    raise ValueError(
                        f"{schedule.pattern} pruning needs output sizes divisible by {rows}; "
                        f"{name} has {linear.out_features}"
                    )
        self.masks = {name: linear.weight.detach() != 0 for name, linear in self.linears.items()}

    @torch.no_grad()
    def step(self, step: int) -> None:
        """After optimiser step `step`: prune further if the schedule says so, then zero the pruned weights."""
        if self.schedule is not None and self.schedule.updates_at(step):
            sparsity = self.schedule.sparsity(step)
            for name, linear in self.linears.items():
                self.masks[name] &= magnitude_mask(linear.weight * self.masks[name], sparsity, self.schedule.pattern)
        for name, linear in self.linears.items():
            linear.weight.masked_fill_(~self.masks[name], 0.0)

    def sparsity(self) -> float:
        """The fraction of the encoder's Linear weights pruned so far."""
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        return pruned / sum(mask.numel() for mask in self.masks.values())


BLOCK_PATTERNS = ("1x4", "4x1")
# The share of a model's zeros that must lie in whole blocks for the report to name the block pattern: a few
# weights of a block-pruned model are zero by chance (a random initialisation, fp16 rounding of tiny weights).
BLOCK_SHARE = 0.99


def zeros_in_blocks(weight: torch.Tensor, pattern: str) -> int:
    """How many zeros of `weight` lie in all-zero blocks: "1x4" along output rows, "4x1" along input columns."""
    out_features, in_features = weight.shape
    if pattern == "1x4":
        if out_features % 4:
            return 0
        blocks = (weight == 0).view(out_features // 4, 4, in_features).all(dim=1)
    else:
        if in_features % 4:
            return 0
        blocks = (weight == 0).view(out_features, in_features // 4, 4).all(dim=2)
    return 4 * int(blocks.sum())


def sparsity_report(model: BertForQuestionAnswering) -> dict:
    """How sparse the encoder is: the fraction of zeros in its Linear weights, per layer and overall.

    `block_shares` gives, for each block pattern, the share of all zeros that lie in whole blocks of it:
    "1x4" (4 consecutive output rows of one input column) and "4x1" (4 consecutive input columns of one
    output row). `pattern` names the first whose share reaches BLOCK_SHARE, otherwise "unstructured";
    "dense" when there are no zeros at all.
    """
    weights = {name: linear.weight.detach() for name, linear in encoder_linears(model).items()}
    layers = []
    for i in range(len(model.bert.encoder.layer)):
        own = [w for name, w in weights.items() if name.startswith(f"bert.encoder.layer.{i}.")]
        layers.append(sum(int((w == 0).sum()) for w in own) / sum(w.numel() for w in own))
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    shares = {p: sum(zeros_in_blocks(w, p) for w in weights.values()) / zeros if zeros else 0.0 for p in BLOCK_PATTERNS}
    if zeros == 0:
        pattern = "dense"
    else:
        blocked = [p for p in BLOCK_PATTERNS if shares[p] >= BLOCK_SHARE]
        pattern = blocked[0] if blocked else "unstructured"
    return {
        "overall": zeros / sum(w.numel() for w in weights.values()),
        "pattern": pattern,
        "block_shares": shares,
        "layers": layers,
    }
