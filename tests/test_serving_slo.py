"""Budgets that follow the load (`dtb serve --slo-ms`), what each answer says ran, /metrics, the schema."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from test_frontier import FRONTIER, FULL, MID, TIMED, TOP

from dynamic_tinybert import LengthConfig, QuestionAnswerer
from dynamic_tinybert.cli.serve import listening_socket
from dynamic_tinybert.frontier import BudgetError
from dynamic_tinybert.serving import ServerSettings, create_app, load
from dynamic_tinybert.serving.batcher import Batcher, DeadlineMissed
from dynamic_tinybert.serving.load import TAIL_MAX, TAIL_PRIOR, TAIL_WINDOW, LoadAdaptiveBudget, Pending, WorkModel
from dynamic_tinybert.serving.metrics import ServerMetrics

PAIR = {"question": "where does alice live ?", "context": "carol lives in rome . alice lives in oslo ."}


@pytest.fixture
def qa(tiny_checkpoint: Path) -> QuestionAnswerer:
    TIMED.save(tiny_checkpoint)
    return QuestionAnswerer.from_pretrained(tiny_checkpoint)


def budget_for(qa, slo_ms: float) -> LoadAdaptiveBudget:
    return LoadAdaptiveBudget(qa.frontier, WorkModel(qa.model.config, qa.frontier), slo_ms)


def chosen_configs(budget: LoadAdaptiveBudget, queued_ms: list[float]) -> list:
    """The length config chosen for a 20-token request behind each amount of queued work (None: shed)."""
    chosen = [budget.choose([20], Pending(ahead, windows=0, running_ms=0.0)) for ahead in queued_ms]
    return [a.point.length_config if a else None for a in chosen]


def slo_with_room(room_ms: float) -> float:
    """The SLO that leaves `room_ms` for predictions beside the tail's prior."""
    return room_ms / (1 - TAIL_PRIOR)


def test_an_idle_server_answers_at_full_length_and_a_busier_one_at_cheaper_points(qa):
    budget = budget_for(qa, slo_ms=slo_with_room(10))  # the timed lines say 4, 3 and 1 ms at 20 tokens
    assert chosen_configs(budget, [0.0, 6.5, 8.5, 9.5]) == [
        FULL.length_config,
        TOP.length_config,
        TIMED.points[0].length_config,
        None,  # even the cheapest would miss the SLO: shed
    ]


def observe_excess(budget: LoadAdaptiveBudget, excess_ms) -> None:
    """A window of requests admitted idle, the i-th taking `excess_ms(i)` longer than predicted."""
    for i in range(TAIL_WINDOW):
        admission = budget.choose([20], Pending(0.0, windows=0, running_ms=0.0))
        budget.observe(admission, admission.elapsed_ms + admission.predicted_ms + excess_ms(i))


def test_requests_slower_than_predicted_raise_the_tail_and_the_choice_gets_cheaper(qa):
    budget = budget_for(qa, slo_ms=12.5)
    observe_excess(budget, lambda i: 5.0 if i % 10 == 0 else 0.5)  # one in ten 5 ms late
    assert budget.tail.ms == pytest.approx(5.0)  # the 99th percentile, not the mean
    # predictions must now fit 12.5 - 5 = 7.5 ms: behind 5 ms of work only the cheapest point's 1 ms does
    assert chosen_configs(budget, [0.0, 5.0, 7.0]) == [FULL.length_config, TIMED.points[0].length_config, None]


def test_the_tail_is_added_so_cheap_points_are_not_charged_a_multiple_of_what_predictions_leave_out(qa):
    budget = budget_for(qa, slo_ms=12.5)
    observe_excess(budget, lambda i: 3.0)  # the cheapest point's 1 ms taking 4 would be a factor of 4
    assert budget.tail.ms == pytest.approx(3.0)
    assert chosen_configs(budget, [0.0, 6.0]) == [FULL.length_config, TOP.length_config]  # 4 + 3; 6 + 3 + 3


def test_the_tail_falls_back_when_requests_run_faster_than_predicted(qa):
    budget = budget_for(qa, slo_ms=12.5)
    observe_excess(budget, lambda i: 5.0)  # a slow spell, then a window of requests faster than predicted
    observe_excess(budget, lambda i: -1.0)
    assert budget.tail.ms == 0.0  # never below 0
    # predictions may now fill the whole 12.5 ms: full length behind 8.5 ms, the cheapest point behind 11.5
    assert chosen_configs(budget, [8.5, 11.5]) == [FULL.length_config, TIMED.points[0].length_config]


def test_the_tail_stops_at_its_maximum_so_an_idle_server_still_answers(qa):
    budget = budget_for(qa, slo_ms=12.5)
    observe_excess(budget, lambda i: 50.0)  # stalls that no choice of point avoids
    assert budget.tail.ms == TAIL_MAX * 12.5
    assert chosen_configs(budget, [0.0]) == [FULL.length_config]  # 4 ms + 6.25 fits 12.5


def test_the_time_a_request_has_taken_counts_as_it_is_and_the_tail_is_of_what_follows(qa):
    budget = budget_for(qa, slo_ms=12.5)
    # 6.8 of the 12.5 ms gone tokenising: 5.7 left, less the prior's 2.5, room for 3.2 ms of predicted work
    admission = budget.choose([20], Pending(0.0, windows=0, running_ms=0.0), elapsed_ms=6.8)
    assert admission.point.length_config == TOP.length_config  # 3 ms; the full model's 4 would not fit
    for _ in range(TAIL_WINDOW):
        budget.observe(admission, total_ms=6.8 + admission.predicted_ms + 2.0)
    assert budget.tail.ms == pytest.approx(2.0)  # beyond the time predicted at admission, not the total


def test_the_prior_holds_until_enough_requests_are_measured(qa):
    budget = budget_for(qa, slo_ms=100.0)
    admission = budget.choose([20], Pending(0.0, windows=0, running_ms=0.0))
    for _ in range(10):
        budget.observe(admission, admission.predicted_ms * 3)
    assert budget.tail.ms == TAIL_PRIOR * 100.0


def test_the_prediction_follows_what_batches_of_each_size_measure(qa):
    work = WorkModel(qa.model.config, qa.frontier)
    one, sixteen = work.predict_ms([20], None), work.predict_ms([20] * 16, None)
    for _ in range(30):
        work.observe_batch(1, uncorrected_ms=10.0, measured_ms=20.0)  # alone: slower than the line says
        work.observe_batch(16, uncorrected_ms=160.0, measured_ms=40.0)  # batched: each window far cheaper
    assert work.predict_ms([20], None) == pytest.approx(one * 2, rel=0.01)
    assert work.predict_ms([20] * 16, None) == pytest.approx(sixteen / 4, rel=0.01)
    assert work.correction(3) == pytest.approx(2.0, rel=0.01)  # an unmeasured size borrows the nearest


def test_the_work_ahead_runs_in_one_batch_with_the_request_at_that_sizes_correction(qa):
    work = WorkModel(qa.model.config, qa.frontier)
    for _ in range(30):
        work.observe_batch(1, 10.0, 20.0)
        work.observe_batch(16, 160.0, 40.0)
    budget = LoadAdaptiveBudget(qa.frontier, work, slo_ms=slo_with_room(25))
    # 15 windows queued (60 ms by the lines) plus this one: a batch of 16 at a quarter of the lines' time
    chosen = budget.choose([20], Pending(queued_ms=60.0, windows=15, running_ms=0.0))
    assert chosen.point.length_config == FULL.length_config
    assert budget.choose([20], Pending(queued_ms=60.0, windows=15, running_ms=20.0)) is None


def test_a_configuration_off_the_frontier_costs_the_full_line_scaled_by_its_macs(qa):
    work = WorkModel(qa.model.config, qa.frontier)
    middle = FRONTIER.points[1].length_config  # MID: never timed in TIMED
    share = work.macs_ratio([20], middle)
    assert 0 < share < 1 and work.window_ms(20, middle) == pytest.approx(work.window_ms(20, None) * share)


def test_the_macs_shares_kept_are_bounded_however_many_configs_requests_pin(qa, monkeypatch):
    monkeypatch.setattr(load, "MACS_SHARES_KEPT", 16)
    work = WorkModel(qa.model.config, qa.frontier)
    first = work.macs_ratio([20], MID.length_config)
    for ratio in range(10, 100):  # a new configuration per request, as pinned length configs may be
        work.macs_ratio([20, 30], LengthConfig.ratios((1.0, 1.0, ratio / 100)))
    assert work._macs_share.cache_info().currsize == 16
    assert work.macs_ratio([20], MID.length_config) == first  # evicted, and computed again the same


def test_slo_needs_a_frontier_and_excludes_a_default_length_choice(tiny_checkpoint: Path):
    bare = QuestionAnswerer.from_pretrained(tiny_checkpoint)
    with pytest.raises(BudgetError, match="no frontier"):
        create_app(bare, settings=ServerSettings(slo_ms=50))
    FRONTIER.save(tiny_checkpoint)
    with pytest.raises(ValueError, match="not both"):
        create_app(QuestionAnswerer.from_pretrained(tiny_checkpoint, budget=0.6), settings=ServerSettings(slo_ms=50))


def test_every_answer_says_what_ran_in_its_headers(qa):
    client = TestClient(create_app(qa))
    full = client.post("/", json={"inputs": PAIR})
    assert full.headers["X-Length-Config"] == "full" and full.headers["X-MACs-Ratio"] == "1.0000"
    assert float(full.headers["X-Queue-Ms"]) >= 0
    cheap = client.post("/", json={"inputs": PAIR, "parameters": {"length_config": "0.5,0.3,0.2"}})
    assert cheap.headers["X-Length-Config"] == "0.5,0.3,0.2" and 0 < float(cheap.headers["X-MACs-Ratio"]) < 1
    for response in (full, client.get("/health"), client.post("/", json={"inputs": []})):  # every response
        name, took = response.headers["Server-Timing"].split(";dur=")
        assert name == "app" and float(took) >= 0


def test_past_the_cheapest_point_requests_are_shed_with_retry_after_and_pinned_ones_still_answered(qa):
    client = TestClient(create_app(qa, settings=ServerSettings(slo_ms=0.001)))
    shed = client.post("/", json={"inputs": PAIR})
    assert shed.status_code == 503 and shed.json()["type"] == "overloaded" and "SLO" in shed.json()["detail"]
    assert int(shed.headers["Retry-After"]) >= 1
    pinned = client.post("/", json={"inputs": PAIR, "parameters": {"length_config": "1.0,1.0,1.0"}})
    assert pinned.status_code == 200
    assert 'dtb_shed_total{reason="slo"} 1.0' in client.get("/metrics").text


def test_the_slo_server_moves_to_cheaper_points_as_work_queues_up_and_back_when_it_drains(qa, monkeypatch):
    app = create_app(qa, settings=ServerSettings(slo_ms=slo_with_room(10)))  # as above
    work, batcher = app.state.work, app.state.batcher
    work.observe_batch = work.observe_decoding = lambda *args: None  # keep the predictions as the lines say
    choose = LoadAdaptiveBudget.choose  # and take tokenising as instant: the room is the queue's alone
    monkeypatch.setattr(
        LoadAdaptiveBudget, "choose", lambda self, lengths, pending, elapsed_ms: choose(self, lengths, pending)
    )
    client = TestClient(app)
    lengths = [w.length for w in qa.windows([PAIR["question"]], [PAIR["context"]])]
    served = []
    for ahead in (0.0, 10 - work.predict_ms(lengths, TOP.length_config), 9.99, 0.0):
        batcher.pending = lambda ahead=ahead: Pending(ahead, windows=0, running_ms=0.0)
        response = client.post("/", json={"inputs": PAIR})
        served.append(response.headers.get("X-Length-Config", response.status_code))
    assert served == ["full", str(TOP.length_config), 503, "full"]


def test_metrics_are_in_the_prometheus_text_format_with_every_family(qa):
    client = TestClient(create_app(qa))
    client.post("/", json={"inputs": PAIR})
    client.post("/", json={"inputs": []})
    text = client.get("/metrics").text
    for family in (
        'dtb_requests_total{endpoint="/",status="200"} 1.0',
        'dtb_requests_total{endpoint="/",status="422"} 1.0',
        "dtb_request_duration_seconds_bucket",
        "dtb_requests_admitted",
        "dtb_queue_windows",
        "dtb_queue_wait_seconds_count",
        "dtb_batch_windows_count",
        "dtb_batch_padded_tokens_sum",
        "dtb_macs_ratio_count 1.0",
        'dtb_prediction_correction{batch="1"}',
    ):
        assert family in text, family


def test_ready_says_not_yet_until_the_model_is_warmed_up(qa):
    app = create_app(qa)
    assert TestClient(app).get("/ready").status_code == 503  # no lifespan: never warmed
    with TestClient(app) as client:  # the lifespan warms the model up
        assert client.get("/ready").json()["status"] == "ready"


def test_info_names_the_model_without_where_it_lies_on_disk(qa, tiny_checkpoint: Path):
    info = TestClient(create_app(qa, name=str(tiny_checkpoint.resolve()))).get("/info").json()
    assert info["model"] == "tiny" and "/" not in info["model"]
    assert info["limits"]["max_inputs"] == ServerSettings().max_inputs


def test_the_schema_documents_every_error_with_the_one_error_shape(qa):
    schema = TestClient(create_app(qa)).get("/openapi.json").json()
    responses = schema["paths"]["/"]["post"]["responses"]
    for status in ("400", "413", "415", "422", "503", "504"):
        assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert TestClient(create_app(qa)).get("/docs").status_code == 404  # no page that needs a CDN


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_checkpoint: Path):
    FRONTIER.save(tiny_checkpoint)
    probe = listening_socket("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    context = " ".join(["alice lives in oslo ."] * 2000)
    server = subprocess.Popen(
        [sys.executable, "-m", "dynamic_tinybert.cli", "serve", "--model", str(tiny_checkpoint), "--port", str(port),
         "--max-seq-len", "40", "--doc-stride", "8", "--max-windows", "5000", "--max-batch-tokens", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        answer: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: answer.append(
                httpx.post(url, json={"inputs": {"question": "where ?", "context": context}}, timeout=60)
            )
        )
        request.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        request.join(60)
        code = server.wait(60)
    finally:
        server.kill()
    assert answer and answer[0].status_code == 200
    assert code == 0


@pytest.mark.slow
@pytest.mark.parametrize("slo_ms", [None, 50.0])
def test_fuzzing_the_api_from_its_schema_never_gets_a_5xx_and_every_response_conforms(qa, slo_ms):
    """schemathesis draws requests from the OpenAPI schema (valid and not) for every operation; with --slo-ms
    too, where each request's length is chosen, checked again at its turn, and perhaps dropped."""
    app = create_app(qa, settings=ServerSettings(max_context_chars=5_000, slo_ms=slo_ms))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/", "/answer", "/health", "/ready", "/info", "/metrics"}
    calls = {mode: 0 for mode in GenerationMode}

    def fuzz(operation, mode: GenerationMode):
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis.settings(max_examples=30, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
        def call(case):
            calls[mode] += 1
            # positive data acceptance is left out: a schema cannot say every rule (a length config's
            # layers, one length choice at most, the server's limits), so a schema-valid request may be a 422
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        call()

    for operation in operations:
        for mode in GenerationMode:
            if operation.method.upper() == "POST" or mode is GenerationMode.POSITIVE:
                fuzz(operation, mode)
    assert calls[GenerationMode.POSITIVE] >= 50 and calls[GenerationMode.NEGATIVE] >= 50, calls


def deadline_batcher(qa, max_batch_tokens: int = 4096) -> Batcher:
    """A batcher under an SLO whose predictions stay as the timed lines say, its batches taken by the test."""
    work = WorkModel(qa.model.config, qa.frontier)
    work.observe_batch = work.observe_decoding = lambda *args: None
    budget = LoadAdaptiveBudget(qa.frontier, work, slo_ms=100.0)
    batcher = Batcher(qa, work, ServerMetrics(), max_batch_tokens, max_wait_ms=0, budget=budget)
    batcher.start = lambda: None  # no batching thread: the test calls _take itself
    return batcher


def due_in(ms: float) -> float:
    return time.monotonic() + ms / 1000.0


def test_a_request_whose_turn_comes_late_runs_at_the_cheaper_point_its_time_left_allows(qa):
    batcher = deadline_batcher(qa)
    windows = qa.windows([PAIR["question"]], [PAIR["context"]])
    lengths = [w.length for w in windows]
    full, top = (sum(batcher.work.window_ms(n, p.length_config) for n in lengths) for p in (FULL, TOP))
    tail = batcher.budget.dispatch_tail.ms
    roomy = batcher.submit(windows, None, deadline=due_in(full + tail + 50))
    assert [job for job, _ in batcher._take()] == [roomy] and roomy.length_config is None  # full length fits
    late = batcher.submit(windows, None, deadline=due_in((full + top) / 2 + tail))  # full no longer fits
    assert [job for job, _ in batcher._take()] == [late] and late.length_config == TOP.length_config
    assert late.dispatch_ms == pytest.approx(top) and batcher.pending().queued_ms == pytest.approx(0.0, abs=1e-9)


def test_a_request_no_point_can_answer_in_its_time_left_is_dropped_at_its_turn_and_the_next_one_runs(qa):
    batcher = deadline_batcher(qa)
    windows = qa.windows([PAIR["question"]], [PAIR["context"]])
    hopeless = batcher.submit(windows, None, deadline=due_in(0.0))
    pinned = batcher.submit(windows, MID.length_config)  # no deadline: a request that pinned its length
    assert [job for job, _ in batcher._take()] == [pinned]
    with pytest.raises(DeadlineMissed, match="cheapest point needs"):
        hopeless.future.result(timeout=0)
    assert batcher.pending().windows == 0 and batcher.pending().queued_ms == pytest.approx(0.0, abs=1e-9)


def test_a_batch_stops_growing_where_it_would_make_a_request_in_it_late(qa):
    batcher = deadline_batcher(qa)
    windows = qa.windows([PAIR["question"]], [PAIR["context"]])
    one = sum(batcher.work.window_ms(w.length, None) for w in windows)
    tight = batcher.submit(windows, None, deadline=due_in(one * 1.5 + batcher.budget.dispatch_tail.ms))
    company = [batcher.submit(windows, None) for _ in range(3)]
    assert [job for job, _ in batcher._take()] == [tight]  # a second window would make it late
    assert [job for job, _ in batcher._take()] == company  # without a deadline among them, they share one batch


def test_a_request_dropped_at_its_turn_is_a_503_counted_as_shed_for_its_deadline(qa, monkeypatch):
    monkeypatch.setattr(LoadAdaptiveBudget, "rechoose", lambda self, lengths, current, left_ms: None)
    client = TestClient(create_app(qa, settings=ServerSettings(slo_ms=10_000)))
    response = client.post("/", json={"inputs": PAIR})
    assert response.status_code == 503 and response.json()["type"] == "overloaded"
    assert "was dropped" in response.json()["detail"] and response.headers["Retry-After"] == "1"
    assert 'dtb_shed_total{reason="deadline"} 1.0' in client.get("/metrics").text


def test_the_slo_learns_from_each_answer_the_time_its_server_timing_reports(qa, monkeypatch):
    taken: list[float] = []
    observe = LoadAdaptiveBudget.observe
    monkeypatch.setattr(
        LoadAdaptiveBudget, "observe", lambda self, admission, ms: (taken.append(ms), observe(self, admission, ms))
    )
    client = TestClient(create_app(qa, settings=ServerSettings(slo_ms=10_000)))
    response = client.post("/", json={"inputs": PAIR})
    assert response.status_code == 200 and len(taken) == 1
    assert float(response.headers["Server-Timing"].split("dur=")[1]) == pytest.approx(taken[0], abs=0.051)
    text = client.get("/metrics").text
    assert 'dtb_slo_tail_ms{decision="admission"}' in text and 'dtb_slo_tail_ms{decision="dispatch"}' in text


@pytest.mark.parametrize("max_batch_tokens", [4096, 0])
def test_a_request_whose_windows_a_deadline_splits_over_batches_gets_them_all_run(qa, max_batch_tokens):
    batcher = deadline_batcher(qa, max_batch_tokens)
    windows = qa.windows([PAIR["question"]] * 3, [PAIR["context"]] * 3)
    lengths = [w.length for w in windows]
    job = batcher.submit(windows, None, deadline=due_in(10_000.0))
    batcher.budget.rechoose = lambda lengths, current, left_ms: FULL  # it fits at its turn, at full length,
    batcher.budget.fits = lambda windows, uncorrected_ms, left_ms: windows == 1  # a window at a time
    taken = []
    while batch := batcher._take():
        taken += [i for _, i in batch]
        batcher._run(batch)
    assert taken == list(range(len(lengths))) and len(job.future.result(timeout=0)[0]) == len(lengths)
