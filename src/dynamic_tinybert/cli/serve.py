"""`dtb serve`: answer over HTTP, in the shape of Hugging Face's hosted inference API (see `serving`)."""

from __future__ import annotations

import argparse
import importlib
import signal
import socket
import threading
import typing
from pathlib import Path

from ..retrieval import Retriever
from ..runtime import bound_kernel_caches
from ..serving.settings import ServerSettings, setting_field, setting_names
from .common import (
    UsageError,
    add_answer_options,
    add_device_arg,
    add_model_args,
    add_precision_arg,
    answer_options,
    load_answerer,
    positive_int,
    required_model,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="answer over HTTP (Hugging Face inference API shape; see serving)")
    add_model_args(serve)
    add_device_arg(serve)
    add_precision_arg(serve)
    add_answer_options(serve)  # the defaults every request gets unless it sets its own
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=port_arg, default=8000, help="TCP port, 1-65535 (default 8000)")
    serve.add_argument("--index", type=Path, help="an index (`dtb index`) that POST /read retrieves passages from")
    serve.add_argument(
        "--ray-replicas",
        type=positive_int,
        metavar="N",
        help="serve from N Ray Serve replicas, each holding the model (the [ray] extra); --threads each",
    )
    serve.add_argument("--ray-address", metavar="ADDRESS", help="with --ray-replicas: join this Ray cluster")
    add_server_settings(serve)
    serve.set_defaults(run=cmd_serve)


def add_server_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServerSettings` field, typed, defaulted and explained by the field."""
    group = parser.add_argument_group("batching and limits")
    hints = typing.get_type_hints(ServerSettings)
    for name in setting_names():
        field = setting_field(name)
        kind = int if hints[name] is int else float
        default = "none" if field.default is None else field.default
        group.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=field.default,
            help=f"{field.metadata['help']} ({default})",
        )


def server_settings(args: argparse.Namespace) -> ServerSettings:
    try:
        return ServerSettings(**{name: getattr(args, name) for name in setting_names()})
    except ValueError as e:
        raise UsageError(f"dtb serve: --{str(e).replace('_', '-')}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        for package in ("fastapi", "uvicorn", "prometheus_client"):
            importlib.import_module(package)
        from ..serving import create_app
        from ..serving.http_server import serve
    except ImportError as e:
        extra = "pip install 'dynamic-tinybert[serve]'"
        raise UsageError(f"dtb serve needs the serve extra ({e.name} is missing): {extra}") from None

    settings = server_settings(args)
    retriever = None
    if args.index is not None:
        try:
            retriever = Retriever.load(args.index)
        except (ValueError, OSError) as e:
            raise UsageError(f"dtb serve: --index {args.index}: {e}") from None
    if args.ray_replicas:
        return serve_replicas(args, settings)
    listening = listening_socket(args.host, args.port)  # a port in use or an unknown host fails before loading
    bound_kernel_caches()  # every batch has new shapes: a kernel cached for each grew memory by 500 MiB (runtime.py)
    qa = load_answerer(args, **answer_options(args))  # checked here: a bad default fails before serving
    try:
        app = create_app(qa, name=required_model(args), settings=settings, retriever=retriever)
    except ValueError as e:
        raise UsageError(f"dtb serve: {e}") from None
    serve(app, listening, settings)
    return 0


def serve_replicas(args: argparse.Namespace, settings: ServerSettings) -> int:
    """The same app as N Ray Serve replicas on one port, until Ctrl-C or SIGTERM."""
    try:
        importlib.import_module("ray.serve")
    except ImportError:
        raise UsageError("dtb serve --ray-replicas needs the ray extra: pip install 'dynamic-tinybert[ray]'") from None
    from ..serve_replicas import start_replicas, stop_replicas

    listening_socket(args.host, args.port).close()  # a port in use or an unknown host fails before Ray starts
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    model = required_model(args)
    start_replicas(
        model,
        args.ray_replicas,
        host=args.host,
        port=args.port,
        revision=args.revision,
        device=args.device,
        precision=args.precision,
        engine=args.engine,
        threads_per_replica=args.threads or 1,
        address=args.ray_address,
        name=model,
        settings=settings,
        **answer_options(args),
    )
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_replicas()
    return 0


def port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a TCP port is between 1 and 65535")
    return port


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), handed to uvicorn, so that what cannot listen is said in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"dtb serve: --host {host!r}: not an address to listen on ({e})") from None
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
    except OSError as e:
        listening.close()
        raise UsageError(f"dtb serve: cannot listen on {host}:{port}: {e.strerror or e}") from None
    return listening
