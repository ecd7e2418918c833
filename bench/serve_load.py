"""`dtb serve` under load: throughput against the one-at-a-time server, a latency SLO held by adaptive budgets,
head-of-line blocking by a maximal request, and the server's memory over the run.

Real SQuAD dev questions, sent from one asyncio process (httpx2) to `dtb serve` subprocesses on 127.0.0.1:

1. the one-at-a-time server (`--max-batch-tokens 0`): one client in sequence (its p50 is the single-question
   latency; the SLO is `--slo-factor` times it unless `--slo-ms` is given), then `--clients` closed-loop clients
   sharing `--requests` requests;
2. the batched server at full length: the same clients and requests (throughput against 1.); again with one
   more client sending a maximal request (a context of `--max-context-chars` characters of dev paragraphs)
   over and over (the others' p99 against without it); then open-loop Poisson arrivals at `--rate` (default
   `--rate-fraction` of its throughput in 2.), the fixed full-length reference;
3. the batched server with `--slo-ms`: the same arrivals and requests; p99 of what it served against the SLO
   (as the server timed it, its `Server-Timing` header, which is what `--slo-ms` holds; and as the client
   did, which adds loopback and this process's own delays on the same cores), how many it shed (503), the
   MACs and length configs it chose, and the F1 of its answers against the full
   length server's on the same requests.

The resident memory of each server is sampled every 0.5 s. Prints the tables and verdicts; with --output
writes them and JSON.

    python bench/serve_load.py --threads 2 --output bench/results/serve-load
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from dynamic_tinybert import checkpoint
from dynamic_tinybert.benchmark.load import (
    Outcome,
    Request,
    body,
    closed_loop,
    open_loop,
    percentiles,
    poisson_arrivals,
    summarise,
)
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.benchmark.server import (
    RssSampler,
    Server,
    ServerError,
    rss_mib,
    served,
)
from dynamic_tinybert.cli.common import positive_float, positive_int
from dynamic_tinybert.precision import PRECISIONS
from dynamic_tinybert.squad import SquadDataset, SquadQuestion, f1_score, load_squad

# The servers compared, as `dtb serve` arguments (beside --threads, --precision, --max-context-chars, --server-args).
ONE_AT_A_TIME = ["--max-batch-tokens", "0"]  # the server as it was: one request at a time
BATCHED: list[str] = []  # dynamic batching as the server's defaults set it, every request at full length


def with_slo(slo_ms: float) -> list[str]:
    """The batched server, choosing each batch's length config so that requests are answered within `slo_ms`."""
    return [*BATCHED, "--slo-ms", f"{slo_ms:.1f}"]


WARMUP = 5  # requests after ready, before the first measured one (a server without /ready warms on them)
RSS_AFTER = 100  # memory "after the first requests": the first sample after this many
RSS_GROWTH_LIMIT = 0.10  # the end may exceed the memory after the first requests by this fraction
THROUGHPUT_RATIO = 2.0  # the issue's bars
HOL_RATIO = 2.0
FIXED_OVER_SLO = 3.0
ISSUE_CLIENTS, ISSUE_REQUESTS = 16, 2000


@dataclass
class Phase:
    """One measured scenario: its outcomes and their summary."""

    name: str
    server: str
    outcomes: list[Outcome]
    client_cpu_s: float  # this process's CPU time while it ran: the load must leave the cores to the server
    summary: dict = field(default_factory=dict)


class ServerRun:
    """A started server, its memory sampled, and the phases measured on it."""

    def __init__(self, name: str, server: Server, args: argparse.Namespace, requests: Sequence[Request]) -> None:
        self.name, self.server, self.args, self.requests = name, server, args, requests
        self.completed = 0
        self.record: dict = {}  # what the result says of the server, once its phases are done
        self.rss = RssSampler(server.pid, completed=lambda: self.completed)

    def done(self, _outcome: Outcome) -> None:
        self.completed += 1

    def closed(self, name: str, clients: int, total: int, repeating: Request | None = None) -> Phase:
        cpu = time.process_time()
        outcomes = asyncio.run(
            closed_loop(
                self.server.url,
                self.requests,
                clients,
                total,
                self.args.duration_s,
                self.args.timeout_s,
                repeating=repeating,
                on_done=self.done,
            )
        )
        return Phase(name, self.name, outcomes, round(time.process_time() - cpu, 2))

    def open(self, name: str, arrivals: Sequence[float]) -> Phase:
        cpu = time.process_time()
        outcomes = asyncio.run(
            open_loop(
                self.server.url,
                self.requests,
                arrivals,
                self.args.duration_s,
                self.args.timeout_s,
                self.args.connections,
                on_done=self.done,
            )
        )
        return Phase(name, self.name, outcomes, round(time.process_time() - cpu, 2))


@contextmanager
def server_run(
    name: str, wanted: list[str], args: argparse.Namespace, requests: Sequence[Request]
) -> Iterator[ServerRun]:
    """`dtb serve` with the `wanted` arguments it has, warmed with WARMUP requests, memory sampled throughout."""
    print(f"starting the {name} server: dtb serve {shlex.join(wanted)}", file=sys.stderr, flush=True)
    with served(wanted, model=args.model) as server:
        run = ServerRun(name, server, args, requests)
        with run.rss:
            asyncio.run(closed_loop(server.url, requests, 1, WARMUP, args.duration_s, args.timeout_s, on_done=run.done))
            yield run
        run.record = {
            "name": name,
            "command": "dtb serve " + shlex.join(server.command[4:]),
            "running_at_end": rss_mib(server.pid) is not None,  # not crashed, nor killed for memory
            "rss": run.rss.summary(RSS_AFTER),
        }


def question_order(questions: Sequence[SquadQuestion], seed: int) -> list[SquadQuestion]:
    """The questions in a seeded random order: consecutive requests come from different articles and lengths."""
    order = list(questions)
    random.Random(seed).shuffle(order)
    return order


def maximal_request(questions: Sequence[SquadQuestion], chars: int) -> Request:
    """The first question, asked about a context of exactly `chars` characters: its paragraph, then the next
    distinct dev paragraphs (again from the first, for a file with too few), joined by blank lines."""
    paragraphs = list(dict.fromkeys(q.context for q in questions))
    parts, length, i = [], 0, 0
    while length < chars:
        parts.append(paragraphs[i % len(paragraphs)])
        length += len(parts[-1]) + 2
        i += 1
    return Request(questions[0].id, body(questions[0].question, "\n\n".join(parts)[:chars]))


def f1_served(outcomes: Sequence[Outcome], gold: dict[str, tuple[str, ...]]) -> float | None:
    """SQuAD v1.1 F1 (0-100) of the answers served (200), against every gold answer of their question."""
    scores = [
        max(f1_score(o.answer or "", g) for g in gold[o.key]) if gold[o.key] else 0.0
        for o in outcomes
        if o.status == 200
    ]
    return round(100 * float(np.mean(scores)), 2) if scores else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def verdicts(phases: dict[str, Phase], servers: list[dict], slo_ms: float, args, gold) -> dict:
    """The issue's checks, each with the numbers it rests on and whether it passed (None: could not be told)."""
    one, batched = phases["one at a time"].summary, phases["batched"].summary
    throughput = ratio(batched["throughput_rps"], one["throughput_rps"])
    slo, fixed = phases["SLO, open loop"], phases["full length, open loop"]
    slo_p99, fixed_p99 = slo.summary["latency_ms"]["p99"], fixed.summary["latency_ms"]["p99"]
    slo_server_p99 = slo.summary["server_ms"]["p99"]
    served_slo = {o.index: o for o in slo.outcomes if o.status == 200}
    same = [o for o in fixed.outcomes if o.status == 200 and o.index in served_slo]
    hol = phases["batched + maximal request"]
    hol_ratio = ratio(hol.summary["latency_ms"]["p99"], batched["latency_ms"]["p99"])
    big = [o for o in hol.outcomes if o.client == args.clients]
    return {
        "issue_size": args.clients >= ISSUE_CLIENTS and args.requests >= ISSUE_REQUESTS,
        "throughput": {
            "batched_rps": batched["throughput_rps"],
            "one_at_a_time_rps": one["throughput_rps"],
            "ratio": throughput,
            "batched_5xx": batched["5xx"],
            "batched_no_response": sum(batched["no_response"].values()),
            "pass": None
            if throughput is None
            else throughput >= THROUGHPUT_RATIO and batched["5xx"] == 0 and not batched["no_response"],
        },
        "slo": {
            "slo_ms": round(slo_ms, 1),
            "rate_rps": round(args.rate, 2),
            "p99_served_ms": slo_p99,
            "p99_server_ms": slo_server_p99,
            "shed_503": slo.summary["shed_503"],
            "fixed_p99_ms": fixed_p99,
            "fixed_p99_over_slo": ratio(fixed_p99, slo_ms),
            "load_shows_it": None if fixed_p99 is None else fixed_p99 > FIXED_OVER_SLO * slo_ms,
            "same_requests": len(same),
            "f1_served_same_requests": f1_served([served_slo[o.index] for o in same], gold),
            "f1_full_length_same_requests": f1_served(same, gold),
            # what --slo-ms holds is the server's time (Server-Timing); the client's adds this process's own delays
            "pass": None if slo_server_p99 is None else slo_server_p99 <= slo_ms,
        },
        "head_of_line": {
            "p99_with_ms": hol.summary["latency_ms"]["p99"],
            "p99_without_ms": batched["latency_ms"]["p99"],
            "ratio": hol_ratio,
            "maximal_requests": len(big),
            "maximal_statuses": {str(s): n for s, n in Counter(o.status or o.error for o in big).items()},
            "maximal_latency_ms": percentiles([o.latency_ms for o in big if o.status == 200])
            | {"max": round(max((o.latency_ms for o in big), default=0.0), 2)},
            # a maximal request refused (413, 503) blocks nothing: the case is shown only if it was answered
            "pass": None if hol_ratio is None or not any(o.status == 200 for o in big) else hol_ratio <= HOL_RATIO,
        },
        "rss": {s["name"]: rss_verdict(s["rss"]) for s in servers},
    }


def rss_verdict(rss: dict) -> dict:
    warmed, end = rss["after_mib"], rss["end_mib"]
    growth = None if warmed is None or end is None else round(end - warmed, 1)
    return {"growth_mib": growth, "pass": None if growth is None else end <= warmed * (1 + RSS_GROWTH_LIMIT)}


def measure(args: argparse.Namespace, dataset: SquadDataset) -> dict:
    questions = question_order(dataset.questions, args.seed)
    requests = [Request(q.id, body(q.question, q.context)) for q in questions]
    gold = {q.id: q.answers for q in dataset.questions}
    big = maximal_request(dataset.questions, args.max_context_chars)
    common = ["--threads", str(args.threads), "--precision", args.precision]
    common += ["--max-context-chars", str(args.max_context_chars), *shlex.split(args.server_args)]
    phases: dict[str, Phase] = {}
    servers: list[dict] = []

    with server_run("one-at-a-time", [*common, *ONE_AT_A_TIME], args, requests) as run:
        phases["sequential"] = run.closed("sequential", 1, args.sequential_requests)
        phases["one at a time"] = run.closed("one at a time", args.clients, args.requests)
    servers.append(run.record)
    single_p50 = summarise(phases["sequential"].outcomes)["latency_ms"]["p50"]
    if args.slo_ms is None and single_p50 is None:
        raise SystemExit("error: the sequential requests got no answers, so there is no SLO to derive: give --slo-ms")
    slo_ms = args.slo_ms or args.slo_factor * single_p50

    with server_run("batched", [*common, *BATCHED], args, requests) as run:
        phases["batched"] = run.closed("batched", args.clients, args.requests)
        phases["batched + maximal request"] = run.closed(
            "batched + maximal request", args.clients, args.requests, repeating=big
        )
        if args.rate is None:
            rps = summarise(phases["batched"].outcomes)["throughput_rps"]
            if not rps:
                raise SystemExit("error: the batched server answered nothing, so no rate to derive: give --rate")
            args.rate = args.rate_fraction * rps
        arrivals = poisson_arrivals(args.rate, args.open_requests or args.requests, seed=args.seed)
        phases["full length, open loop"] = run.open("full length, open loop", arrivals)
    servers.append(run.record)

    with server_run("batched with SLO", [*common, *with_slo(slo_ms)], args, requests) as run:
        phases["SLO, open loop"] = run.open("SLO, open loop", arrivals)
    servers.append(run.record)

    for phase in phases.values():
        normal = [o for o in phase.outcomes if o.client < args.clients]  # without the maximal request's client
        phase.summary = summarise(normal) | {"f1_served": f1_served(normal, gold), "client_cpu_s": phase.client_cpu_s}
    return {
        "command": "python bench/serve_load.py " + shlex.join(sys.argv[1:]),
        "model": args.model or "shipped",
        "data": f"{args.data.name} ({len(questions)} questions)",
        "machine": f"{cpu_model()}; servers at {args.precision}, --threads {args.threads}",
        "clients": args.clients,
        "single_question_p50_ms": single_p50,
        "maximal_request_context_chars": args.max_context_chars,
        "servers": servers,
        "scenarios": [{"name": p.name, "server": p.server} | p.summary for p in phases.values()],
        "verdicts": verdicts(phases, servers, slo_ms, args, gold),
    }


def cell(value) -> str:
    return "-" if value is None else str(value)


def passed(value: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "not measured"}[value]


def markdown(result: dict) -> str:
    v = result["verdicts"]
    lines = [
        f"# dtb serve under load: {result['model']}",
        "",
        f"`{result['command']}`",
        "",
        f"{result['data']}; {result['clients']} clients; {result['machine']}. Single question (one client, "
        f"sequential, one-at-a-time server): p50 {cell(result['single_question_p50_ms'])} ms.",
    ]
    gone = [s["name"] for s in result["servers"] if not s["running_at_end"]]
    if gone:
        lines += ["", f"**The {', '.join(gone)} server had exited before the end of its scenarios.**"]
    if not v["issue_size"]:
        lines += ["", f"Smaller than the issue asks ({ISSUE_CLIENTS} clients, {ISSUE_REQUESTS} requests)."]
    lines += [
        "",
        "| scenario | server | requests | ok | 4xx | 5xx | shed 503 | no answer | answers/s | p50 ms | p95 ms "
        "| p99 ms | server p99 ms | F1 served | mean MACs ratio | client CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["scenarios"]:
        ms = s["latency_ms"]
        lines.append(
            f"| {s['name']} | {s['server']} | {s['requests']} | {s['ok']} | {s['4xx']} | {s['5xx']} "
            f"| {s['shed_503']} | {sum(s['no_response'].values())} | {cell(s['throughput_rps'])} | {cell(ms['p50'])} "
            f"| {cell(ms['p95'])} | {cell(ms['p99'])} | {cell(s['server_ms']['p99'])} | {cell(s['f1_served'])} "
            f"| {cell(s['macs_ratio_mean'])} "
            f"| {s['client_cpu_s']} |"
        )
    t, slo, hol = v["throughput"], v["slo"], v["head_of_line"]
    lines += [
        "",
        "Verdicts:",
        "",
        f"- Throughput: batched {cell(t['batched_rps'])} answers/s, {cell(t['ratio'])}x the one-at-a-time "
        f"server's {cell(t['one_at_a_time_rps'])} (>= {THROUGHPUT_RATIO:g}x), {t['batched_5xx']} 5xx, "
        f"{t['batched_no_response']} without an answer: "
        f"**{passed(t['pass'])}**",
        f"- SLO {slo['slo_ms']} ms at {slo['rate_rps']} requests/s (Poisson): p99 served {cell(slo['p99_server_ms'])} "
        f"ms in the server (its Server-Timing, what --slo-ms holds), {cell(slo['p99_served_ms'])} ms at the client "
        f"(with the load generator's own delays on the same machine), {slo['shed_503']} shed (503): "
        f"**{passed(slo['pass'])}**. The fixed full-length server's p99 at that "
        f"load: {cell(slo['fixed_p99_ms'])} ms, {cell(slo['fixed_p99_over_slo'])}x the SLO "
        f"(> {FIXED_OVER_SLO:g}x: {passed(slo['load_shows_it'])}; otherwise raise --rate). F1 on the "
        f"{slo['same_requests']} requests both answered: {cell(slo['f1_served_same_requests'])} served under the SLO "
        f"against {cell(slo['f1_full_length_same_requests'])} at full length.",
        f"- Head of line: the others' p99 {cell(hol['p99_with_ms'])} ms with the maximal request "
        f"({result['maximal_request_context_chars']} characters) against {cell(hol['p99_without_ms'])} ms without: "
        f"{cell(hol['ratio'])}x (<= {HOL_RATIO:g}x): **{passed(hol['pass'])}**. The maximal request, sent "
        f"{hol['maximal_requests']} times: statuses {hol['maximal_statuses']}, p50 "
        f"{cell(hol['maximal_latency_ms']['p50'])} ms, max {hol['maximal_latency_ms']['max']} ms.",
        "",
        f"| server | RSS start MiB | after {RSS_AFTER} requests | peak | end | growth after warm-up "
        f"(<= {RSS_GROWTH_LIMIT:.0%}) |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["servers"]:
        r, growth = s["rss"], v["rss"][s["name"]]
        lines.append(
            f"| {s['name']} | {cell(r['start_mib'])} | {cell(r['after_mib'])} | {cell(r['peak_mib'])} "
            f"| {cell(r['end_mib'])} | {cell(growth['growth_mib'])} MiB: {passed(growth['pass'])} |"
        )
    lines += ["", "Length configs served (X-Length-Config):", "", "| scenario | length config | answers |"]
    lines += ["|---|---|---|"]
    for s in result["scenarios"]:
        if s["name"] in ("full length, open loop", "SLO, open loop"):
            lines += [f"| {s['name']} | {config} | {n} |" for config, n in s["length_configs"].items()]
    lines += ["", "Servers:", ""] + [f"- {s['name']}: `{s['command']}`" for s in result["servers"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="checkpoint directory or hub id (default: the shipped model)")
    add_data_arg(parser, "dev-v1.1.json.gz", help="SQuAD file the questions and gold answers come from")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the servers' --precision")
    parser.add_argument("--clients", type=positive_int, default=16, help="closed-loop clients (default 16)")
    parser.add_argument("--requests", type=positive_int, default=2000, help="requests per closed-loop scenario")
    parser.add_argument(
        "--sequential-requests", type=positive_int, default=200, help="one client's, for the single-question p50"
    )
    parser.add_argument("--open-requests", type=positive_int, help="Poisson arrivals (default: --requests)")
    parser.add_argument("--rate", type=positive_float, help="Poisson arrivals per second (default: --rate-fraction)")
    parser.add_argument(
        "--rate-fraction",
        type=positive_float,
        default=1.0,
        help="the rate as a fraction of the batched server's closed-loop throughput (default 1.0)",
    )
    parser.add_argument("--slo-ms", type=positive_float, help="the SLO server's --slo-ms (default: --slo-factor)")
    parser.add_argument(
        "--slo-factor", type=positive_float, default=2.0, help="the SLO as a multiple of the single-question p50"
    )
    parser.add_argument(
        "--max-context-chars",
        type=positive_int,
        default=16384,
        help="every server's --max-context-chars, and the maximal request's context length (default 16384)",
    )
    parser.add_argument("--server-args", default="", help="more dtb serve arguments for every server, one string")
    parser.add_argument("--duration-s", type=positive_float, default=300.0, help="cap on each scenario's sending")
    parser.add_argument("--timeout-s", type=positive_float, default=60.0, help="each request's client timeout")
    parser.add_argument("--connections", type=positive_int, default=256, help="open loop: most connections open")
    parser.add_argument("--seed", type=int, default=0, help="question order and arrival times")
    add_run_args(parser, threads=2, output_required=False)  # the servers' threads
    args = parse_args(parser)
    try:
        dataset = load_squad(args.data)
    except (OSError, ValueError) as e:  # missing, or not a SQuAD file
        raise SystemExit(f"error: --data: {e}") from None
    try:
        result = measure(args, dataset)
    except ServerError as e:
        raise SystemExit(f"error: {e}") from None
    show_result(args.output, markdown(result), result, checkpoint.resolve(args.model))


if __name__ == "__main__":
    main()
