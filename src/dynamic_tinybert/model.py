"""BERT for extractive question answering, with Drop-and-Restore dynamic sequence length.

Read top to bottom: the config, then one module per sub-layer (named exactly as Hugging Face checkpoints
name their weights, so every BERT checkpoint maps onto this file 1:1), then the encoder, where each layer
may keep only part of its tokens (Length-Adaptive Transformer, Kim & Cho 2021): the most attended-to, as
in LAT, or those a learned per-layer token scorer ranks highest. Dropped tokens
keep the hidden state of the last layer they completed and are restored to their places before the span
head, which scores every position.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .length_config import LengthConfig, is_full_length

ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
}


TOKEN_SELECTIONS = ("attention", "learned")


# The fields of a config that are sizes (integers >= 1), and the rates that are fractions.
SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
RATES = (("hidden_dropout_prob", 0.0, 1.0), ("attention_probs_dropout_prob", 0.0, 1.0), ("initializer_range", 0.0, 1.0))
MAX_PARAMETERS = 2_000_000_000  # a config over this is a typo, not a BERT: refused before any allocation


@dataclass
class BertConfig:
    """The shape of a BERT encoder; the field names are those of a Hugging Face `config.json`."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    token_selection: str = "attention"  # how a dropping layer ranks tokens: see BertLayer

    def __post_init__(self) -> None:
        for name in SIZES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size):
            raise ValueError(f"pad_token_id must be a token id below vocab_size {self.vocab_size}, got {pad!r}")
        for name, low, high in RATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low}, {high}), got {value!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise ValueError(f"layer_norm_eps must be a small positive number, got {eps!r}")
        if self.parameters() > MAX_PARAMETERS:
            raise ValueError(
                f"these sizes make a model of {self.parameters():,} parameters, over the {MAX_PARAMETERS:,} "
                "this package builds (BERT-large has 335 million): check num_hidden_layers and the widths"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
        if not isinstance(self.token_selection, str) or self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection {self.token_selection!r} is not one of {TOKEN_SELECTIONS}")

    def parameters(self) -> int:
        """How many weights a model of this shape holds (embeddings, encoder, span head), before building it."""
        h, i = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size + 2) * h
        layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
        return embeddings + self.num_hidden_layers * layer + 2 * h + 2

    @classmethod
    def from_dict(cls, data: dict) -> BertConfig:
        """Read a Hugging Face BERT `config.json` dict; unknown keys (architectures, ...) are ignored."""
        model_type = data.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"model_type is {model_type!r}; only BERT checkpoints are supported")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type {data['position_embedding_type']!r} is not supported")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        """The `config.json` that lets transformers load the saved checkpoint too."""
        return {"architectures": ["BertForQuestionAnswering"], "model_type": "bert", **asdict(self)}


@dataclass
class SpanLogits:
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)
    fresh: torch.Tensor | None = None  # (B, T) positions that left the last layer, not restored; None: all
    trace: Trace | None = None  # only when asked for (distillation)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))  # (B, T, H)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, need_scores: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend over the real tokens in `mask` (B, T); return the attention scores only when asked for.

        Scores are the pre-softmax logits (B, nh, T, T) in fp32 (even when the projections run in bf16: they
        decide which tokens survive), padded keys at the dtype's minimum. The fused kernel is used whenever
        nobody needs them (every non-dropping layer at inference).
        """
        B, T, H = x.shape
        q, k, v = (
            proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
            for proj in (self.query, self.key, self.value)
        )
        key_mask = None if bool(mask.all()) else mask[:, None, None, :]  # (B, 1, 1, T); None: nothing to mask
        dropout = self.dropout_prob if self.training else 0.0
        if need_scores:
            scores = ((q / math.sqrt(self.head_size)) @ k.transpose(-1, -2)).float()  # (B, nh, T, T)
            if key_mask is not None:
                scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
            context = F.dropout(scores.softmax(dim=-1), dropout, self.training).to(v.dtype) @ v
        else:
            scores = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)
        return context.transpose(1, 2).reshape(B, T, H), scores


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, need_scores: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, scores = self.self(x, mask, need_scores)
        return self.output(context, x), scores


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    """Attention, then (Drop-and-Restore happens here, in the encoder) the feed-forward sub-layer.

    With `token_selection="learned"` the layer also has a `token_scorer`: a linear probe on the attention
    output, trained to predict which tokens the full model's answer depends on (see
    `training.objectives.TokenScoring`). The Length-Adaptive Transformer instead keeps the tokens that
    receive the most attention, a ranking no loss can teach and one that often drops the answer.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.token_scorer = nn.Linear(config.hidden_size, 1) if config.token_selection == "learned" else None

    def significance(self, attended: torch.Tensor, scores: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """How much each token (B, T) deserves to be kept, from the learned probe or the attention it receives."""
        if self.token_scorer is not None:
            return self.token_scorer(attended).squeeze(-1).float()
        return attention_significance(scores.softmax(dim=-1), mask)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


def is_token_scorer(name: str) -> bool:
    """Whether a module or weight name (`layer.0.token_scorer`, `...token_scorer.weight`) is a token scorer's."""
    return "token_scorer" in name.split(".")


# Token ranks for selection: [CLS] first, then protected question tokens, then the rest, padding last.
RANK_CLS, RANK_QUESTION, RANK_TOKEN, RANK_PADDING = 2, 1, 0, -1


def attention_significance(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """LAT's significance (B, T): the attention probs (B, nh, T, T) each token receives, summed over heads
    and over real query positions."""
    return torch.einsum("bhqk,bq->bk", probs, mask.to(probs.dtype))


def select_tokens(
    significance: torch.Tensor, mask: torch.Tensor, rank: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the tokens a layer keeps: the `keep[b]` most significant tokens of each input.

    significance (B, T); mask (B, T) real tokens; rank (B, T) one of the RANK_* values; keep (B,) tokens to
    keep, at most the input's real tokens. Tokens are ordered by rank first and significance second, so
    [CLS] always survives and padding never displaces a real token. Protected question tokens keep their
    rank only in the first half of the kept slots (`keep[b] // 2` of them, most significant first).

    Returns index (B, K) into the current tokens, kept ones in their original order, K = max(keep);
    and the new mask (B, K), False in the slots of inputs that keep fewer than K.
    """
    B, T = mask.shape
    question = rank == RANK_QUESTION
    if bool(question.any()):
        # Protected question tokens fill at most half of the kept slots; the rest compete with the context
        # on significance, so that a layer keeping few tokens (or a short context) still keeps context.
        by_question_significance = argsort_descending(significance.masked_fill(~question, -math.inf))
        place = torch.empty_like(by_question_significance).scatter_(
            1, by_question_significance, torch.arange(T, device=mask.device).expand(B, T)
        )
        rank = rank.masked_fill(question & (place >= (keep // 2)[:, None]), RANK_TOKEN)
    by_significance = argsort_descending(significance)
    by_rank = argsort_descending(rank.gather(1, by_significance))
    order = by_significance.gather(1, by_rank)  # (B, T) best first
    position_in_order = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=mask.device).expand(B, T))
    kept = position_in_order < keep[:, None]  # (B, T)
    K = int(keep.max())
    # kept tokens first, each group in original order (keys are unique, so the sort is exact)
    index = ((~kept) * T + torch.arange(T, device=mask.device)).argsort(dim=1)[:, :K]  # (B, K)
    new_mask = torch.arange(K, device=mask.device)[None, :] < keep[:, None]  # (B, K)
    return index, new_mask


def argsort_descending(values: torch.Tensor) -> torch.Tensor:
    """The indices that sort each row of `values` (B, T) largest first, equal values in index order."""
    return values.argsort(dim=1, descending=True, stable=True)


def restore(buffer: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Write each current token's hidden state (B, K, H) back to its original position in buffer (B, T+1, H).

    positions (B, K) holds original indices; slots that carry no token point at the spare last row T. Whole rows
    are written, not every element indexed on its own.
    """
    rows = torch.ones_like(positions).cumsum(dim=0) - 1  # (B, K) each slot's input
    return buffer.index_put((rows, positions), hidden)


@dataclass
class Trace:
    """What distillation looks at: the input of every layer and every layer's attention.

    hidden_states[0] is the embeddings output and hidden_states[i + 1] layer i's output; masks[i] are the
    real tokens of hidden_states[i] and positions[i] their original indices (so masks[i] and positions[i]
    are also layer i's input, and the last ones the tokens that leave the encoder fresh rather than
    restored); attention_scores[i] are layer i's pre-softmax scores and token_scores[i] its learned token
    scores (learned token selection only). Under a dropping length config they cover the tokens each layer
    saw, not the restored sequence.
    """

    hidden_states: list[torch.Tensor] = field(default_factory=list)  # (B, T_i, H) each, one more than layers
    attention_scores: list[torch.Tensor] = field(default_factory=list)  # (B, nh, T_i, T_i) each
    masks: list[torch.Tensor] = field(default_factory=list)  # (B, T_i) each, one more than layers
    positions: list[torch.Tensor] = field(default_factory=list)  # (B, T_i) each, one more than layers
    token_scores: list[torch.Tensor] = field(default_factory=list)  # (B, T_i) each

    def kept_positions(self, row: int = 0) -> list[list[int]]:
        """The original positions each layer that ran kept for input `row`, ascending: the tokens it passed to
        its feed-forward and the next layer (every real token when it dropped none)."""
        return [
            sorted(positions[row][mask[row]].tolist()) for positions, mask in zip(self.positions[1:], self.masks[1:])
        ]


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        keep_counts: torch.Tensor | None,
        rank: torch.Tensor,
        skip_layers: frozenset[int] = frozenset(),
        trace: Trace | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run every layer; with keep_counts (B, L) a layer keeps only that many tokens of each input.

        A layer that would keep every real token computes no significance scores and uses the fused kernel.
        Layers in `skip_layers` are passed over (LayerDrop); the tokens stay as they were.
        Returns the hidden states (B, T, H), dropped tokens restored, and which positions (B, T) left the
        last layer fresh (None when no layer dropped a token).
        """
        B, T, H = x.shape
        positions = torch.arange(T, device=x.device).expand(B, T)  # (B, K) original index of each slot
        restored = None  # (B, T+1, H), filled only once a layer drops tokens
        if trace is not None:
            trace.hidden_states.append(x)
        for i, layer in enumerate(self.layer):
            if i in skip_layers:
                continue
            keep = None if keep_counts is None else keep_counts[:, i]
            drops = keep is not None and bool((keep < mask.sum(dim=1)).any())
            by_attention = layer.token_scorer is None
            attended, scores = layer.attention(x, mask, need_scores=(drops and by_attention) or trace is not None)
            significance = None
            if drops or (trace is not None and not by_attention):
                significance = layer.significance(attended, scores, mask)
            if trace is not None:
                trace.attention_scores.append(scores)
                trace.masks.append(mask)
                trace.positions.append(positions)
                if not by_attention:
                    trace.token_scores.append(significance)
            if drops:
                if restored is None:
                    restored = x.new_zeros(B, T + 1, H)
                restored = restore(restored, x, positions)  # dropped tokens keep this layer's input
                index, mask = select_tokens(significance, mask, rank, keep)
                attended = attended.gather(1, index.unsqueeze(-1).expand(-1, -1, H))
                positions = positions.gather(1, index).masked_fill(~mask, T)
                rank = rank.gather(1, index).masked_fill(~mask, RANK_PADDING)
            x = layer.feed_forward(attended)
            if trace is not None:
                trace.hidden_states.append(x)
        if trace is not None:
            trace.masks.append(mask)
            trace.positions.append(positions)
        if restored is None:
            return x, None
        fresh = torch.zeros(B, T + 1, dtype=torch.bool, device=x.device).scatter(1, positions, mask)[:, :T]
        return restore(restored, x, positions)[:, :T], fresh


class BertModel(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)


class BertForQuestionAnswering(nn.Module):
    """BERT encoder plus span head; `length_config` picks the tokens each layer keeps, per call."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, used for weights a checkpoint lacks (e.g. a fresh span head)."""
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        length_config: LengthConfig | None = None,
        skip_layers: frozenset[int] = frozenset(),
        trace: bool = False,
    ) -> SpanLogits:
        """Start and end logits for every position of input_ids (B, T).

        Training extras: `skip_layers` passes over those layers (LayerDrop); `trace` also returns every
        layer's hidden states and attention scores (for intermediate-layer distillation).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = attention_mask.bool()
        keep_counts = None
        if not is_full_length(length_config):
            length_config.check_fits(self.config.num_hidden_layers, self.config.max_position_embeddings)
            keep_counts = length_config.keep_counts(mask.sum(dim=1))
        rank = token_ranks(
            mask, token_type_ids, protect_question=bool(length_config and length_config.protect_question)
        )
        recorded = Trace() if trace else None
        embedded = self.bert.embeddings(input_ids, token_type_ids)
        hidden, fresh = self.bert.encoder(embedded, mask, keep_counts, rank, frozenset(skip_layers), recorded)
        start, end = self.qa_outputs(hidden).unbind(dim=-1)  # (B, T) each
        return SpanLogits(start.contiguous(), end.contiguous(), fresh, recorded)


def token_ranks(mask: torch.Tensor, token_type_ids: torch.Tensor, protect_question: bool) -> torch.Tensor:
    """RANK_* of every token (B, T): [CLS] at position 0, question tokens when protected, padding."""
    rank = torch.full_like(token_type_ids, RANK_TOKEN)
    if protect_question:
        rank = rank.masked_fill(token_type_ids == 0, RANK_QUESTION)
    rank[:, 0] = RANK_CLS
    return rank.masked_fill(~mask, RANK_PADDING)
