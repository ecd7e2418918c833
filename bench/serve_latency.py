"""What does answering over HTTP add? The same questions one at a time, in process and through `dtb serve`.

Starts `dtb serve` for the model (a subprocess on a free local port, the same threads), then answers
`--questions` dev questions spread over the file one request at a time: in this process with the same
QuestionAnswerer, and over HTTP on one kept-alive connection (JSON in and out). Each path answers all
of them in turn, twice (ABAB), so that a slow spell of the machine falls on both. Reports p50/p90
latency of each and whether the answers agree. Prints a table and writes JSON.

    python bench/serve_latency.py --threads 2 --questions 200 --output bench/results/serve-latency
"""

from __future__ import annotations

import http.client
import json
import time

import numpy as np

from dynamic_tinybert import LengthConfig, QuestionAnswerer, checkpoint
from dynamic_tinybert.benchmark.provenance import cpu_model
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.benchmark.server import served
from dynamic_tinybert.latency import evenly_spaced
from dynamic_tinybert.squad import load_squad

WARMUP = 5
ROUNDS = 2  # in process, then over HTTP, twice: alternating per question, each side's idle OpenMP
# threads spin on the cores the other side needs next, which inflated HTTP's cost 2-3x


def post(connection: http.client.HTTPConnection, question: str, context: str, parameters: dict) -> dict:
    """One request on a kept-alive connection, as a client with a session (requests, httpx) sends it."""
    body = json.dumps({"inputs": {"question": question, "context": context}, "parameters": parameters})
    connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"dtb serve answered {response.status}: {response.read().decode()[:500]}")
    return json.load(response)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", help="checkpoint directory or hub id (default: the shipped model)")
    add_data_arg(parser, "dev-v1.1.json.gz", help="SQuAD file the questions come from")
    parser.add_argument("--questions", type=int, default=200, help="questions, spread over the file")
    parser.add_argument("--length-config", help="per-request length config, e.g. 1.0,1.0,0.8,0.75,0.5,0.4+q")
    add_run_args(parser, threads=2)  # the server gets the same threads
    args = parse_args(parser)
    # No keep_freed_memory(): `dtb serve` runs without it, and in process is measured the same way.

    directory = checkpoint.resolve(args.model)
    qa = QuestionAnswerer.from_pretrained(directory)
    questions = evenly_spaced(load_squad(args.data).questions, args.questions)
    parameters = {} if args.length_config is None else {"length_config": args.length_config}  # JSON: the text
    options = {} if args.length_config is None else {"length_config": LengthConfig.parse(args.length_config)}
    with served(["--threads", str(args.threads)], model=args.model) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        paths = {
            "in process": lambda q: qa(question=q.question, context=q.context, **options),
            "over HTTP": lambda q: post(connection, q.question, q.context, parameters),
        }
        latencies: dict[str, list[float]] = {name: [] for name in paths}
        answers: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(ROUNDS):
            for name, answer in paths.items():
                connection.close()  # reopened by the next request: the server drops connections idle for 5 s
                for q in questions[:WARMUP]:
                    answer(q)
                for q in questions:
                    started = time.perf_counter()
                    answers[name].append(answer(q))
                    latencies[name].append((time.perf_counter() - started) * 1000)
    agree = sum((a["start"], a["end"]) == (b["start"], b["end"]) for a, b in zip(*answers.values()))
    rows = {name: summary(ms) for name, ms in latencies.items()}
    result = {
        "model": args.model or "shipped",
        "data": args.data.name,
        "questions": len(questions),
        "length_config": args.length_config or "full",
        "threads": args.threads,
        "machine": cpu_model(),
        "rows": rows,
        "http_overhead_p50_ms": round(rows["over HTTP"]["p50_ms"] - rows["in process"]["p50_ms"], 2),
        "same_answers": agree / len(answers["in process"]),
    }
    show_result(args.output, markdown(result), result, directory)


def summary(ms: list[float]) -> dict:
    return {key: round(float(np.percentile(ms, q)), 2) for key, q in (("p50_ms", 50), ("p90_ms", 90))} | {
        "mean_ms": round(float(np.mean(ms)), 2)
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Answering over HTTP: {result['model']}",
        "",
        f"{result['questions']} questions of {result['data']} spread over the file, one request at a time, "
        f"length config {result['length_config']}, {result['threads']} threads on {result['machine']}; "
        f"the same answers for {result['same_answers']:.0%} of them.",
        "",
        "| path | p50 ms | p90 ms | mean ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {r['p50_ms']} | {r['p90_ms']} | {r['mean_ms']} |" for name, r in result["rows"].items()]
    lines += ["", f"HTTP adds {result['http_overhead_p50_ms']} ms at the median."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
