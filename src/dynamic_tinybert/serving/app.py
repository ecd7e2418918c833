"""The HTTP side: validation, limits and errors, admission, and the answer endpoints over the batching loop.

`POST /` (also `/answer`) takes `{"inputs": {"question": ..., "context": ...}, "parameters": {...}}` and
answers as the transformers question-answering pipeline behind Hugging Face's hosted inference API does:
`{"answer", "score", "start", "end"}`, a list of those when `top_k` > 1, a list of results for a list of
inputs. Parameters are the pipeline's plus this project's length choice (`budget`, `latency_ms` or
`length_config`). Each answer says in headers what ran: `X-Length-Config`, `X-MACs-Ratio` (of the full
model's MACs on this request's windows) and `X-Queue-Ms`.

A request is checked against the limits, admitted (503 past `--max-queue`), tokenised on a worker thread,
given its length configuration (its own, the server's default, or with `--slo-ms` the most accurate that
the queue ahead leaves room for), and submitted to the batching loop; its answers are decoded from the
logits that come back. `/health`, `/ready` and `/metrics` never wait on the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import web
from ..features import Window
from ..length_config import LengthConfig, is_full_length
from ..options import LENGTH_CHOICES, AnswerOptions
from ..pipeline import QuestionAnswerer, tokens_per_question
from ..retrieval import Retriever, as_documents, placed
from .batcher import Batcher, DeadlineMissed, Job
from .load import Admission, LoadAdaptiveBudget, WorkModel
from .metrics import CONTENT_TYPE, ServerMetrics
from .schema import (
    ERROR_TYPES,
    AnswerRequest,
    AnswerResponse,
    QuestionContext,
    ReadRequest,
    ReadResponse,
    error_responses,
)
from .settings import ServerSettings

log = logging.getLogger(__name__)

DEFAULT_RETRIEVE = 20  # passages a /read without documents retrieves from the server's index
DISCONNECT_POLL_S = 0.1  # how often a waiting request checks that its client is still there
WARM_UP_CONTEXT = "The model answers questions about a text. It is warmed up before the server says it is ready."
ANSWER_ERRORS = error_responses(400, 408, 413, 415, 422, 499, 503, 504)


class ServiceError(Exception):
    """A request refused or cut short: its status, stable type, one-sentence detail and any headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def error_json(status: int, detail: str, errors: list | None = None, headers: dict | None = None) -> JSONResponse:
    kind = ERROR_TYPES.get(status, ("error", ""))[0]
    return JSONResponse({"detail": detail, "type": kind, "errors": errors or []}, status, headers=headers)


def create_app(
    qa: QuestionAnswerer,
    name: str = "model",
    settings: ServerSettings | None = None,
    retriever: Retriever | None = None,
) -> FastAPI:
    """A FastAPI application answering with `qa` under `settings`; `name` is what `/info` calls the model.

    With a `retriever` (`dtb serve --index`), `POST /read` without documents reads the passages it retrieves.
    """
    settings = settings or ServerSettings()
    if settings.slo_ms is not None and any(getattr(qa.defaults, n) is not None for n in LENGTH_CHOICES):
        raise ValueError("--slo-ms chooses each request's length itself: give it, or a default length choice, not both")
    metrics = ServerMetrics()
    work = WorkModel(qa.model.config, qa.frontier)
    adaptive = None if settings.slo_ms is None else LoadAdaptiveBudget(qa.frontier, work, settings.slo_ms)
    if adaptive is not None:
        metrics.tail_ms.labels("admission").set(adaptive.tail.ms)
        metrics.tail_ms.labels("dispatch").set(adaptive.dispatch_tail.ms)
    batcher = Batcher(qa, work, metrics, settings.max_batch_tokens, settings.max_wait_ms, adaptive)
    workers = anyio.CapacityLimiter(settings.cpu_workers)
    ready = anyio.Event()
    admitted = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        await anyio.to_thread.run_sync(warm_up, limiter=workers)
        ready.set()
        yield
        batcher.stop()

    def warm_up() -> None:
        """Run the model before saying ready: the first passes are slow, and they seed the time predictions."""
        windows = qa.windows(["What is warmed up?"], [WARM_UP_CONTEXT])
        for _ in range(3):
            batcher.submit(windows, None).future.result()

    app = FastAPI(
        title="dynamic-tinybert",
        summary="Extractive question answering with a length-adaptive BERT",
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads its scripts from a CDN; /openapi.json is the schema
        redoc_url=None,
    )
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, read_timeout_s=settings.read_timeout_s, metrics=metrics
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, e: ServiceError) -> JSONResponse:
        return error_json(e.status, e.detail, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        raw = e.errors()
        if raw and raw[0]["type"] == "json_invalid":
            return error_json(400, f"the body is not valid JSON: {raw[0].get('ctx', {}).get('error', 'cannot parse')}")
        errors = field_errors(raw, e.body)
        shown = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        return error_json(422, shown + more, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = {
            400: "the body could not be read as JSON (too deeply nested, or not text)",
            413: f"the body is larger than the server's limit of {settings.max_body_bytes} bytes (--max-body-bytes)",
        }.get(e.status_code, str(e.detail))
        return error_json(e.status_code, detail, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return error_json(500, f"internal error ({type(e).__name__}); the server logged it")

    def check_limits(pairs: Sequence[QuestionContext], parameters: dict) -> None:
        if len(pairs) > settings.max_inputs:
            raise ServiceError(
                422, f"inputs: {len(pairs)} pairs, over the limit of {settings.max_inputs} (--max-inputs)"
            )
        for i, pair in enumerate(pairs):
            for field, limit, flag in (
                ("question", settings.max_question_chars, "--max-question-chars"),
                ("context", settings.max_context_chars, "--max-context-chars"),
            ):
                text = getattr(pair, field)
                if len(text) > limit:
                    raise ServiceError(
                        422, f"inputs[{i}].{field}: {len(text)} characters, over the limit of {limit} ({flag})"
                    )
        check_top_k(parameters)

    def check_top_k(parameters: dict) -> None:
        if parameters.get("top_k", 0) > settings.max_top_k:
            raise ServiceError(
                422, f"parameters.top_k: {parameters['top_k']}, over the limit of {settings.max_top_k} (--max-top-k)"
            )

    def request_options(parameters) -> dict:
        """A request's `parameters` as answering options (a length config parsed; a bad one is a 422)."""
        options = parameters.model_dump(exclude_none=True)
        if "length_config" in options:
            options["length_config"] = checked(lambda: LengthConfig.parse(options["length_config"]))
        return options

    def choose_length(
        opts: AnswerOptions, windows: list[Window], questions: int, pinned: bool, elapsed_ms: float
    ) -> tuple[LengthConfig | None, Admission | None]:
        """The request's own or the server's length choice; with --slo-ms and none given, what the load allows
        a request that has taken `elapsed_ms` so far (with the admission that chose it)."""
        if adaptive is None or pinned:
            try:
                return qa.length_config_for(opts, tokens_per_question(windows, questions)), None
            except ValueError as e:
                raise ServiceError(422, str(e)) from None
        pending = batcher.pending()
        admission = adaptive.choose([w.length for w in windows], pending, elapsed_ms)
        if admission is None:
            metrics.shed.labels("slo").inc()
            ahead_ms = pending.total_ms(work)
            retry = adaptive.retry_after_s(ahead_ms)
            raise ServiceError(
                503,
                f"overloaded: no frontier point can answer within the {settings.slo_ms:g} ms SLO behind the "
                f"{ahead_ms:.0f} ms of work queued; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        return admission.point.length_config, admission

    def observe_slo(admission: Admission, job: Job | None, took_ms: float) -> None:
        """Both decisions' tails learn how long a request answered under the SLO took: `took_ms` in all,
        from its arrival to its response (what a client sees, less the network)."""
        adaptive.observe(admission, took_ms)
        metrics.tail_ms.labels("admission").set(adaptive.tail.ms)
        if job is not None and job.dispatch_ms is not None and job.started is not None:
            adaptive.dispatch_tail.observe(job.dispatch_ms, 1000.0 * (time.monotonic() - job.started))
            metrics.tail_ms.labels("dispatch").set(adaptive.dispatch_tail.ms)

    def deadline(started: float) -> float:
        """When a request that arrived at `started` (perf_counter) must be answered, on the batcher's clock."""
        return time.monotonic() + settings.slo_ms / 1000.0 - (time.perf_counter() - started)

    def shed_late(e: DeadlineMissed, admission: Admission | None, started: float) -> ServiceError:
        """The 503 for a request the batcher dropped at its turn; its admission learns how late it would have been."""
        metrics.shed.labels("deadline").inc()
        if admission is not None:
            adaptive.observe(admission, 1000.0 * (time.perf_counter() - started) + e.needed_ms)
        return ServiceError(
            503,
            f"overloaded: this request {e} to answer within the {settings.slo_ms:g} ms SLO, so it was dropped; "
            "retry in 1 s",
            {"Retry-After": "1"},
        )

    async def wait_for(job: Job, request: Request) -> tuple[list, list]:
        """The job's logits; its queued work is dropped if the client leaves or the time limit cancels us."""
        future = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
                if done:
                    return future.result()
                if await request.is_disconnected():
                    metrics.cancelled.labels("disconnect").inc()
                    raise ServiceError(499, "the client closed the connection before the answer was ready")
        finally:
            if not job.future.done():
                batcher.cancel(job)

    async def through_model(
        request: Request, response: Response, prepare: Callable, finish: Callable, questions: int, pinned: bool
    ):
        """Admit a request, tokenise it (`prepare() -> (options, windows, state)`, on a worker thread), choose its
        length, run its windows in the batcher's batches and `finish(state, start, end, length_config)` (on a
        worker thread); say in the headers what ran."""
        nonlocal admitted
        if admitted >= settings.max_queue:
            metrics.shed.labels("queue").inc()
            raise ServiceError(
                503,
                f"overloaded: {admitted} requests are queued, the limit (--max-queue); retry in 1 s",
                {"Retry-After": "1"},
            )
        admitted += 1
        metrics.in_flight.inc()
        started = getattr(request.state, "arrived", None) or time.perf_counter()  # RequestGuard's clock
        queue_ms = 0.0
        try:
            with anyio.fail_after(settings.request_timeout_s):
                opts, windows, state = await anyio.to_thread.run_sync(prepare, limiter=workers)
                if len(windows) > settings.max_windows:
                    raise ServiceError(
                        422,
                        f"the texts need {len(windows)} model windows at this max_seq_len and doc_stride, "
                        f"over the limit of {settings.max_windows} (--max-windows)",
                    )
                elapsed_ms = 1000.0 * (time.perf_counter() - started)
                length_config, admission = choose_length(opts, windows, questions, pinned, elapsed_ms)
                logits: tuple[list, list] = ([], [])
                job = None
                if windows:
                    job = batcher.submit(windows, length_config, deadline(started) if admission is not None else None)
                    try:
                        logits = await wait_for(job, request)
                    except DeadlineMissed as e:
                        raise shed_late(e, admission, started) from None
                    length_config, queue_ms = job.length_config, job.queue_ms or 0.0  # the batcher may go cheaper
                decoding = time.perf_counter()
                result = await anyio.to_thread.run_sync(finish, state, *logits, length_config, limiter=workers)
        except TimeoutError:
            metrics.cancelled.labels("timeout").inc()
            raise ServiceError(
                504,
                f"the request took longer than the server's limit of {settings.request_timeout_s:g} s "
                "(--request-timeout-s); its remaining work was dropped",
            ) from None
        finally:
            admitted -= 1
            metrics.in_flight.dec()
        work.observe_decoding(1000.0 * (time.perf_counter() - decoding))
        if admission is not None:  # measured when its response starts, as Server-Timing says (RequestGuard)
            request.state.on_response = lambda took_ms: observe_slo(admission, job, took_ms)
        ratio = work.macs_ratio([w.length for w in windows], length_config) if windows else 1.0
        metrics.macs_ratio.observe(ratio)
        response.headers["X-Length-Config"] = "full" if is_full_length(length_config) else str(length_config)
        response.headers["X-MACs-Ratio"] = f"{ratio:.4f}"
        response.headers["X-Queue-Ms"] = f"{queue_ms:.1f}"
        return result

    def checked(call: Callable):
        """`call()`, its ValueError (so are BudgetError and LengthConfigError) a 422 saying why."""
        try:
            return call()
        except ValueError as e:
            raise ServiceError(422, str(e)) from None

    @app.post("/", response_model=AnswerResponse, responses=ANSWER_ERRORS)
    @app.post("/answer", response_model=AnswerResponse, responses=ANSWER_ERRORS)
    async def answer(body: AnswerRequest, request: Request, response: Response):
        """Answer one question about a context, or a list of them."""
        pairs = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        parameters = request_options(body.parameters)
        check_limits(pairs, parameters)
        questions, contexts = [p.question for p in pairs], [p.context for p in pairs]

        def prepare():
            opts = checked(lambda: qa.options(**parameters))
            windows = checked(lambda: qa.windows(questions, contexts, **parameters))
            return opts, windows, (opts, windows)

        def finish(state, start_logits, end_logits, length_config):
            opts, windows = state
            return qa.decode(windows, contexts, start_logits, end_logits, opts)

        pinned = any(name in parameters for name in LENGTH_CHOICES)
        results = await through_model(request, response, prepare, finish, len(pairs), pinned)
        answers = [found[0] if len(found) == 1 else found for found in results]
        return answers if isinstance(body.inputs, list) else answers[0]

    @app.post("/read", response_model=ReadResponse, response_model_exclude_none=True, responses=ANSWER_ERRORS)
    async def read(body: ReadRequest, request: Request, response: Response):
        """Answer one question from many documents (or, with `dtb serve --index`, from retrieved passages):
        answers ranked across them by a calibrated score, each with its document and offsets."""
        parameters = request_options(body.parameters)
        check_top_k(parameters)
        passages = None
        if body.documents is None:
            if retriever is None:
                raise ServiceError(422, "documents: give the documents to read (this server has no --index)")
            retrieve = body.retrieve or DEFAULT_RETRIEVE
            if retrieve > settings.max_documents:
                raise ServiceError(
                    422, f"retrieve: {retrieve}, over the limit of {settings.max_documents} (--max-documents)"
                )
            passages = await anyio.to_thread.run_sync(
                lambda: [p for p, _ in checked(lambda: retriever.retrieve(body.question, retrieve))], limiter=workers
            )
            documents = as_documents(passages)
        else:
            if body.retrieve is not None:
                raise ServiceError(422, "retrieve: only without documents, from the server's --index")
            documents = [d if isinstance(d, str) else d.model_dump(exclude_none=True) for d in body.documents]
            check_documents(documents)
        top_k = parameters.pop("top_k", 5)

        def prepare():
            reading = checked(
                lambda: qa.start_read(
                    body.question, documents, top_k, max_documents=settings.max_documents,
                    max_characters=settings.max_documents * settings.max_context_chars, **parameters,
                )
            )  # fmt: skip
            return reading.opts, reading.windows, reading

        def finish(reading, start_logits, end_logits, length_config):
            result = qa.finish_read(reading, start_logits, end_logits, length_config)
            return result if passages is None else placed(result, passages)

        if not documents:  # an index that shares no word with the question
            return placed({"answers": [], "no_answer": 1.0, "skipped": [], "length_config": None}, [])
        pinned = any(name in parameters for name in LENGTH_CHOICES)
        return await through_model(request, response, prepare, finish, 1, pinned)

    def check_documents(documents: list) -> None:
        if len(documents) > settings.max_documents:
            raise ServiceError(
                422, f"documents: {len(documents)}, over the limit of {settings.max_documents} (--max-documents)"
            )
        for i, document in enumerate(documents):
            text = document if isinstance(document, str) else document["text"]
            if len(text) > settings.max_context_chars:
                raise ServiceError(
                    422,
                    f"documents[{i}]: {len(text)} characters, over the limit of {settings.max_context_chars} "
                    "(--max-context-chars)",
                )

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the process answers. Never waits on the model."""
        return {"status": "ok"}

    @app.get("/ready", responses=error_responses(503))
    async def ready_check() -> dict:
        """Readiness: the model is loaded and warmed up (503 until then). Never waits on the model."""
        if not ready.is_set():
            raise ServiceError(503, "the model is still warming up", {"Retry-After": "1"})
        return {
            "status": "ready",
            "queued_requests": admitted,
            "pending_ms": round(batcher.pending().total_ms(work), 1),
        }

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Counters and histograms in the Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/info")
    async def info() -> dict:
        """The model, the server's default options and limits, and the frontier a budget chooses from."""
        config = qa.model.config
        frontier = qa.frontier
        return {
            "model": public_name(name),
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "token_selection": config.token_selection,
            "defaults": {
                key: str(value) if isinstance(value, LengthConfig) else value
                for key, value in vars(qa.defaults).items()
            },
            "limits": vars(settings),
            "frontier": None
            if frontier is None
            else [
                {
                    "length_config": str(point.length_config),
                    "macs_ratio": point.macs_ratio,
                    "f1": point.f1,
                    "latency_ms": point.latency_ms,
                }
                for point in [*frontier.points, frontier.full]
            ],
        }

    app.include_router(web.router(qa, settings))  # GET / (the page), its assets, POST /explain
    app.state.batcher = batcher
    app.state.work = work
    app.state.metrics = metrics
    return app


def field_errors(raw: list[dict], body) -> list[dict]:
    """Validation errors as `FieldError`s, without the values sent and without the union's bookkeeping.

    `inputs` is one pair or a list of pairs, and pydantic reports a bad one under each form it tried; only
    the errors of the form the request sent are kept (a list, or anything else as a pair), without the
    form's name in where the error is.
    """
    sent_list = isinstance(body, dict) and isinstance(body.get("inputs"), list)
    sent_form = "list[QuestionContext]" if sent_list else "QuestionContext"
    errors = []
    for err in raw:
        loc = list(err["loc"])
        if loc[:2] == ["body", "inputs"] and len(loc) > 2 and loc[2] in ("QuestionContext", "list[QuestionContext]"):
            if loc[2] != sent_form:
                continue
            del loc[2]
        errors.append({"loc": loc, "msg": err["msg"], "type": err["type"]})
    return errors


def public_name(name: str) -> str:
    """A model's name without where it lies on the server's disk: a folder's name, or the hub id as given."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


class RequestGuard:
    """Pure ASGI middleware: counts every request in /metrics, refuses a body over the limit (413, at once
    when its declared length says so, else as its bytes arrive) or not JSON (415), and drops a client that
    stalls between parts of its body (408). Errors raised while FastAPI reads the body reach the app's
    handlers, so every refusal is an `ErrorResponse`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout_s: float, metrics: ServerMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        scope.setdefault("state", {})["arrived"] = started  # a request's clock starts here, before its body is read
        route = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        status = 500

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                took_ms = 1000.0 * (time.perf_counter() - started)
                on_response = scope["state"].get("on_response")  # the app's, to learn what the request took
                if on_response is not None:
                    on_response(took_ms)
                timing = f"app;dur={took_ms:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", timing)]}
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                response = error_json(
                    413, f"the body is larger than the server's limit of {self.max_body_bytes} bytes (--max-body-bytes)"
                )
                return await response(scope, receive, counted_send)
            if scope["method"] == "POST" and not _is_json(scope):
                response = error_json(415, "send the body as JSON, with Content-Type: application/json")
                return await response(scope, receive, counted_send)
            received = 0
            body_done = False

            async def guarded_receive() -> Message:
                nonlocal received, body_done
                if body_done:
                    return await receive()
                try:
                    with anyio.fail_after(self.read_timeout_s):
                        message = await receive()
                except TimeoutError:
                    raise StarletteHTTPException(408, "the body did not arrive in time") from None
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise StarletteHTTPException(413)
                body_done = message["type"] != "http.request" or not message.get("more_body", False)
                return message

            await self.app(scope, guarded_receive, counted_send)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


KNOWN_PATHS = {"/", "/answer", "/read", "/explain", "/health", "/ready", "/metrics", "/info", "/openapi.json"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


def _is_json(scope: Scope) -> bool:
    kind = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
