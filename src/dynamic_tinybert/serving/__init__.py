"""The HTTP service (`dtb serve`), split as Text Embeddings Inference splits one: the HTTP side with its
validation, limits and errors (`app`), the batching loop that owns the model (`batcher`), the budgets that
follow the load (`load`), the limits' one definition (`settings`), the bodies (`schema`), `/metrics`
(`metrics`) and the HTTP server around it all (`http_server`).

`settings` needs nothing beyond the core install (every `dtb` command builds its parser from it); the rest
needs the `serve` extra and is imported on first use.
"""

from __future__ import annotations

import importlib

from .settings import ServerSettings

LAZY = {"create_app": "app", "AnswerRequest": "schema", "ErrorResponse": "schema", "Parameters": "schema"}

__all__ = ["ServerSettings", *LAZY]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
