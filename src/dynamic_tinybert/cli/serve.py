"""`dtb serve`: answer over HTTP, in the shape of Hugging Face's hosted inference API (see `serving`)."""

from __future__ import annotations

import argparse

from .common import (
    UsageError,
    add_answer_options,
    add_device_arg,
    add_model_args,
    add_precision_arg,
    answer_options,
    load_answerer,
    required_model,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="answer over HTTP (Hugging Face inference API shape; see serving.py)")
    add_model_args(serve)
    add_device_arg(serve)
    add_precision_arg(serve)
    add_answer_options(serve)  # the defaults every request gets unless it sets its own
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serving import create_app
    except ImportError as e:
        extra = "pip install 'dynamic-tinybert[serve]'"
        raise UsageError(f"dtb serve needs the serve extra ({e.name} is missing): {extra}") from None

    qa = load_answerer(args, **answer_options(args))  # checked here: a bad default fails before listening
    uvicorn.run(create_app(qa, name=required_model(args)), host=args.host, port=args.port)
    return 0
