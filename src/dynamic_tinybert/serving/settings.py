"""`ServerSettings`: the one definition of the service's limits and batching, with their defaults and help.

Every resource a request can consume has a limit here, and exceeding it is a documented status code, not a
slow death: `dtb serve` derives one flag per field (`cli.serve`), and the app reads nothing else. The
defaults follow the services users know: Text Embeddings Inference's token-budgeted batches and client
batch size, TorchServe's body limit and queue, Haystack's `top_k`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MAY_BE_ZERO = ("max_batch_tokens", "max_wait_ms")


def setting(default, help: str):
    """A field of `ServerSettings`: its default and the help its `dtb serve` flag shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerSettings:
    """How `dtb serve` batches, adapts and refuses; each limit names the status a request past it gets."""

    max_batch_tokens: int = setting(
        4096,
        "padded tokens per forward pass, gathered across concurrent requests (0: one request at a time, "
        "each batched on its own)",
    )
    max_wait_ms: float = setting(
        0.0,
        "how long a batch that is not full may wait for more requests, in ms (0: it takes what queued while the "
        "model was busy, as Text Embeddings Inference does; on a CPU, where a larger batch saves little, a wait "
        "made a lone request slower and 16 clients no faster)",
    )
    slo_ms: float | None = setting(
        None,
        "latency objective per request, in ms: a request that sets no budget of its own gets the most accurate "
        "frontier point predicted to finish within it given the work queued ahead; 503 when even the cheapest "
        "would not",
    )
    max_queue: int = setting(64, "requests admitted at once, waiting or running; 503 beyond")
    max_body_bytes: int = setting(2**20, "request body size in bytes; 413 beyond")
    max_inputs: int = setting(32, "(question, context) pairs in one request; 422 beyond")
    max_context_chars: int = setting(100_000, "characters in one context; 422 beyond")
    max_question_chars: int = setting(2_000, "characters in one question; 422 beyond")
    max_documents: int = setting(100, "documents (or retrieved passages) one /read may read; 422 beyond")
    max_windows: int = setting(512, "model windows one request may need in all; 422 beyond")
    max_top_k: int = setting(20, "answers per question a request may ask for; 422 beyond")
    request_timeout_s: float = setting(60.0, "seconds a request may take; 504 beyond, its queued work cancelled")
    read_timeout_s: float = setting(
        10.0, "seconds a client may take to send a request's headers, or between parts of its body; then closed"
    )
    keep_alive_s: float = setting(5.0, "seconds an idle keep-alive connection stays open")
    max_connections: int = setting(512, "open connections; further requests get 503 from the HTTP server")
    cpu_workers: int = setting(2, "threads that tokenise and decode beside the one batching thread")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "slo_ms":
                continue
            integer = field.type == "int"
            kind = int if integer else int | float
            if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
                raise ValueError(
                    f"{field.name} must be {'an integer' if integer else 'a finite number'}, got {value!r}"
                )
            if value < 0 or (value == 0 and field.name not in MAY_BE_ZERO):
                raise ValueError(
                    f"{field.name} must be {'>= 0' if field.name in MAY_BE_ZERO else '> 0'}, got {value!r}"
                )

    @property
    def batches_across_requests(self) -> bool:
        return self.max_batch_tokens > 0


def setting_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerSettings)]


def setting_field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(ServerSettings) if f.name == name)
