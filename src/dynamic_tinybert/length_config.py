"""Length configurations: how many tokens each encoder layer keeps.

A configuration is a small validated value. It is given either as absolute token counts per layer
(the Length-Adaptive Transformer's form, counted out of a padded 384) or as keep ratios of each input's
real length, so that short inputs are cheap too and nothing has to be padded to be fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class LengthConfigError(ValueError):
    """A length configuration that cannot be used; the message says which entry and why."""


@dataclass(frozen=True)
class LengthConfig:
    """Per-layer token budget.

    `values` holds token counts when `relative` is False and keep ratios in (0, 1] of each input's real
    length when it is True. `protect_question` ranks question tokens above context tokens, so they are
    dropped last, up to half of the tokens a layer keeps (the other half stays open to the context).
    [CLS] is always kept and padding is never kept while a real token is dropped.
    """

    values: tuple[float, ...]
    relative: bool
    protect_question: bool = False

    def __post_init__(self) -> None:
        if not self.values:
            raise LengthConfigError("length config is empty: give one entry per encoder layer")
        for i, value in enumerate(self.values):
            if self.relative and not (0.0 < value <= 1.0):
                raise LengthConfigError(f"length config entry {i} is {value}: keep ratios must be in (0, 1]")
            if not self.relative and (value != int(value) or value < 1):
                raise LengthConfigError(f"length config entry {i} is {value}: token counts must be integers >= 1")
        for i in range(1, len(self.values)):
            if self.values[i] > self.values[i - 1]:
                raise LengthConfigError(
                    f"length config must not increase from one layer to the next: "
                    f"layer {i} keeps {self.values[i]} after layer {i - 1} kept {self.values[i - 1]}"
                )

    @classmethod
    def tokens(cls, counts: Sequence[int], protect_question: bool = False) -> LengthConfig:
        """Absolute tokens kept per layer, as in LAT (e.g. 269,253,252,202,104,34)."""
        for i, count in enumerate(counts):
            if not float(count).is_integer():
                raise LengthConfigError(f"length config entry {i} is {count}: token counts must be integers >= 1")
        return cls(tuple(int(c) for c in counts), relative=False, protect_question=protect_question)

    @classmethod
    def ratios(cls, ratios: Sequence[float], protect_question: bool = False) -> LengthConfig:
        """Fraction of each input's real tokens kept per layer."""
        return cls(tuple(float(r) for r in ratios), relative=True, protect_question=protect_question)

    @classmethod
    def constant_ratio(cls, ratio: float, num_layers: int) -> LengthConfig:
        """Keep the same fraction of real tokens from the first layer on."""
        return cls.ratios([ratio] * num_layers)

    @classmethod
    def parse(cls, text: str) -> LengthConfig:
        """Parse the command-line form: integers are token counts, decimals are keep ratios.

        "269,253,252,202,104,34" keeps tokens; "1.0,0.9,0.8,0.7,0.6,0.5" keeps ratios; a trailing "+q"
        ("...,0.5+q") protects question tokens.
        """
        body = text.strip()
        protect = body.endswith("+q")
        body = body.removesuffix("+q")
        parts = [p.strip() for p in body.split(",") if p.strip()]
        if not parts:
            raise LengthConfigError(f"length config {text!r} is empty: expected comma-separated numbers")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            raise LengthConfigError(f"length config {text!r} is not a comma-separated list of numbers") from None
        if any("." in p or "e" in p.lower() for p in parts):
            return cls.ratios(numbers, protect_question=protect)
        return cls.tokens(numbers, protect_question=protect)

    def __str__(self) -> str:
        text = ",".join(str(float(v)) if self.relative else str(int(v)) for v in self.values)
        return text + ("+q" if self.protect_question else "")

    def to_dict(self) -> dict:
        key = "ratios" if self.relative else "lengths"
        return {key: list(self.values), "protect_question": self.protect_question}

    @classmethod
    def from_dict(cls, data: dict) -> LengthConfig:
        protect = bool(data.get("protect_question", False))
        if "ratios" in data:
            return cls.ratios(data["ratios"], protect_question=protect)
        if "lengths" in data:
            return cls.tokens(data["lengths"], protect_question=protect)
        raise LengthConfigError(f"length config {data!r} has neither 'lengths' nor 'ratios'")

    def check_fits(self, num_layers: int, max_positions: int) -> None:
        """Raise unless the config has one entry per layer and counts within the model's positions."""
        if len(self.values) != num_layers:
            raise LengthConfigError(
                f"length config {self} has {len(self.values)} entries; the model has {num_layers} layers"
            )
        if not self.relative and self.values[0] > max_positions:
            raise LengthConfigError(
                f"length config {self} keeps {int(self.values[0])} tokens; the model has {max_positions} positions"
            )

    def keep_counts(self, real_lengths: torch.Tensor) -> torch.Tensor:
        """Tokens each input keeps in each layer: (B,) real lengths -> (B, num_layers) counts.

        Counts never exceed an input's real length, so padding is never kept in place of a real token.
        """
        real = real_lengths.to(torch.long).unsqueeze(1)  # (B, 1)
        values = torch.tensor(self.values, dtype=torch.float64, device=real.device).unsqueeze(0)
        if self.relative:
            # ceil, minus a hair so that 0.7 * 10 keeps 7 tokens, not 8
            counts = torch.ceil(values * real - 1e-9).to(torch.long)
        else:
            counts = values.to(torch.long)
        return counts.clamp(min=1).minimum(real)


def full_length(num_layers: int) -> LengthConfig:
    """The configuration that drops nothing."""
    return LengthConfig.constant_ratio(1.0, num_layers)


def is_full_length(config: LengthConfig | None) -> bool:
    return config is None or (config.relative and all(math.isclose(v, 1.0) for v in config.values))
