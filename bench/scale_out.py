"""`dtb answer` in one process and on Ray: the same answers, throughput, faults, and flat memory.

Every run is a fresh `dtb answer ... --json` process, as a user runs it, on JSON lines made from SQuAD v1.1 dev:

- identical answers: the first `--identical` questions in one process (2 threads) and on a local Ray
  instance (2 actors x 1 thread): same ids, and how many answers (text and offsets, all top-k) are equal;
- throughput on the first `--throughput` questions, in 8 chunks: 1 process x 2 threads, Ray 2 actors x 1
  thread, and Ray 4 actors x 1 thread (more actors than cores, to show the overhead); Ray's start-up apart;
- faults on `--faults` questions: one Ray actor killed (SIGKILL) once the first chunk is written, then the
  driver killed mid-run and the job resumed with `--resume`, in one process and on Ray: each id exactly once;
- memory: the driver's peak RSS on `--memory` lines and on 10x as many (dev questions repeated under new
  ids), answered by a tiny random model (2 layers, 64 wide, the shipped tokenizer) to keep it short.

    python bench/scale_out.py --output bench/results/scale-out
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from dynamic_tinybert import checkpoint
from dynamic_tinybert.benchmark.results import add_data_arg, add_run_args, parse_args, script_parser, show_result
from dynamic_tinybert.model import BertConfig, BertForQuestionAnswering
from dynamic_tinybert.squad import load_squad

ROOT = Path(__file__).resolve().parents[1]
DTB = [sys.executable, "-m", "dynamic_tinybert.cli"]


def write_questions(dev, path: Path, count: int) -> Path:
    """`count` JSON lines cycling through the dev questions; repeats get new ids (ID~k)."""
    questions = dev.questions
    with open(path, "w") as f:
        for i in range(count):
            q = questions[i % len(questions)]
            rounds = i // len(questions)
            item = {"id": q.id if rounds == 0 else f"{q.id}~{rounds}", "question": q.question, "context": q.context}
            f.write(json.dumps(item) + "\n")
    return path


def answer_args(model: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return [*DTB, "answer", "--model", str(model), "--input", str(source), "--output", str(output), "--json", *extra]


def dtb_answer(args: list[str]) -> dict:
    """Run `dtb answer ... --json` to the end; its summary, with the process's wall time and load average."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {run.stderr[-2000:]}")
    summary, _ = json.JSONDecoder().raw_decode(run.stdout[run.stdout.index("{") :])  # Ray may print after it
    return {**summary, "wall_s": round(time.perf_counter() - started, 2), "load_before": round(load, 2)}


def read_answers(path: Path) -> tuple[dict, int]:
    """Answers by id, and how many lines the file has (more than ids: an id written twice)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["id"]: line["answers"] for line in lines}, len(lines)


def same_answers(a: list[dict], b: list[dict]) -> bool:
    return [(x["answer"], x["start"], x["end"]) for x in a] == [(y["answer"], y["start"], y["end"]) for y in b]


def identical(model: Path, source: Path, work: Path) -> dict:
    one = dtb_answer(answer_args(model, source, work / "one.jsonl", "--threads", "2"))
    on_ray = dtb_answer(answer_args(model, source, work / "ray.jsonl", "--ray", "--actors", "2"))
    a, lines_a = read_answers(work / "one.jsonl")
    b, lines_b = read_answers(work / "ray.jsonl")
    return {
        "questions": one["questions"],
        "same_ids": a.keys() == b.keys() and lines_a == lines_b == len(a),
        "same_answers": sum(same_answers(a[k], b[k]) for k in a if k in b),
        "max_score_difference": max(abs(x["score"] - y["score"]) for k in a for x, y in zip(a[k], b.get(k, []))),
        "one_process": one,
        "ray": on_ray,
    }


THROUGHPUT_RUNS = {
    "1 process x 2 threads": ["--threads", "2"],
    "Ray, 2 actors x 1 thread": ["--ray", "--actors", "2", "--threads-per-actor", "1"],
    "Ray, 4 actors x 1 thread": ["--ray", "--actors", "4", "--threads-per-actor", "1"],
}


def throughput(model: Path, source: Path, work: Path, chunk_size: int) -> dict:
    chunks = ["--chunk-size", str(chunk_size)]  # several chunks, or one actor would answer them all
    return {
        name: dtb_answer(answer_args(model, source, work / f"throughput-{i}.jsonl", *chunks, *extra))
        for i, (name, extra) in enumerate(THROUGHPUT_RUNS.items())
    }


def session_pids(session: int) -> list[int]:
    """The processes of a session this script started (the driver, and a local Ray instance under it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # stat field 6, the session id
                pids.append(int(entry.name))
    return pids


def actor_pids(session: int) -> list[int]:
    found = []
    for pid in session_pids(session):
        try:
            if b"ChunkAnswerer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for_lines(driver: subprocess.Popen, output: Path, at_least: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while lines_in(output) < at_least:
        if driver.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the job ended or stalled before {at_least} lines: {driver.stderr.read()[-2000:]}")
        time.sleep(0.1)


def end_session(session: int) -> None:
    """Kill what is left of a session this script started (a local Ray instance its killed driver left)."""
    for pid in session_pids(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exactly_once(output: Path, expected: int) -> dict:
    answers, lines = read_answers(output)
    return {"lines": lines, "distinct_ids": len(answers), "expected": expected, "exactly_once": lines == expected}


def kill_an_actor(model: Path, source: Path, output: Path, total: int, chunk: str) -> dict:
    args = answer_args(model, source, output, "--ray", "--actors", "2", "--chunk-size", chunk)
    driver = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_lines(driver, output, 1)
        victims = actor_pids(driver.pid)
        os.kill(victims[0], signal.SIGKILL)
        at_kill = lines_in(output)
        out, err = driver.communicate(timeout=900)
    finally:
        end_session(driver.pid)
    if driver.returncode != 0:
        raise RuntimeError(f"the job failed after an actor was killed: {err[-2000:]}")
    return {"lines_when_killed": at_kill, "actors_found": len(victims), **exactly_once(output, total)}


def kill_the_driver(model: Path, source: Path, output: Path, total: int, chunk: str, *mode: str) -> dict:
    args = answer_args(model, source, output, "--chunk-size", chunk, *mode)
    driver = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_lines(driver, output, total // 3)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        at_kill = lines_in(output)
    finally:
        end_session(driver.pid)
    resumed = dtb_answer([*args, "--resume"])
    return {"lines_when_killed": at_kill, "resumed_skipped": resumed["skipped"], **exactly_once(output, total)}


def tiny_random_model(folder: Path) -> Path:
    """A random 2-layer, 64-wide BERT with the shipped model's tokenizer: memory without the model's cost."""
    tokenizer = checkpoint.load_tokenizer(checkpoint.DEFAULT_MODEL)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=384,
    )
    torch.manual_seed(0)
    checkpoint.save_checkpoint(BertForQuestionAnswering(config).eval(), tokenizer, folder)
    return folder


def memory(dev, work: Path, lines: int) -> dict:
    model = tiny_random_model(work / "tiny-random")
    rows = {}
    for count in (lines, 10 * lines):
        source = write_questions(dev, work / f"memory-{count}.jsonl", count)
        rows[count] = dtb_answer(answer_args(model, source, work / f"memory-{count}-out.jsonl", "--threads", "1"))
        source.unlink()
    small, large = (rows[c]["peak_rss_mib"] for c in (lines, 10 * lines))
    return {"runs": rows, "growth": round(large / small - 1, 4)}


def markdown(result: dict) -> str:
    same, speed, faults, mem = result["identical"], result["throughput"], result["faults"], result["memory"]
    lines = [
        "# dtb answer: one process and Ray",
        "",
        f"{result['machine']}. Command: `{result['command']}`",
        "",
        f"## Identical answers ({same['questions']:,} dev questions)",
        "",
        f"Same ids, each once: {same['same_ids']}. Answers equal (text and offsets): {same['same_answers']:,} of "
        f"{same['questions']:,}. Largest score difference: {same['max_score_difference']:.2g}.",
        "",
        f"## Throughput ({result['sizes']['throughput']:,} dev questions, 8 chunks)",
        "",
        "| run | questions/s | answering s | Ray start s | process wall s | load average before |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in speed.items():
        lines.append(
            f"| {name} | {run['questions_per_s']:.1f} | {run['seconds']:.1f} | {run.get('ray_start_s', '-')} "
            f"| {run['wall_s']:.1f} | {run['load_before']:.2f} |"
        )
    lines += [
        "",
        f"## Faults ({result['sizes']['faults']:,} dev questions)",
        "",
        "| fault | lines when killed | lines at the end | distinct ids | exactly once |",
        "|---|---|---|---|---|",
    ]
    for name, run in faults.items():
        lines.append(
            f"| {name} | {run['lines_when_killed']:,} | {run['lines']:,} | {run['distinct_ids']:,} "
            f"| {run['exactly_once']} |"
        )
    lines += [
        "",
        "## Memory (tiny random model, 1 process x 1 thread)",
        "",
        "| input lines | peak RSS MiB | questions/s |",
        "|---|---|---|",
    ]
    for count, run in mem["runs"].items():
        lines.append(f"| {int(count):,} | {run['peak_rss_mib']:.1f} | {run['questions_per_s']:.1f} |")
    lines += ["", f"Peak RSS growth from the smaller to the larger input: {mem['growth']:+.1%}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--model", type=Path, default=checkpoint.DEFAULT_MODEL, help="default: the shipped model")
    add_data_arg(parser, "dev-v1.1.json.gz")
    parser.add_argument("--identical", type=int, default=2000, help="questions for the identical-answers check")
    parser.add_argument("--throughput", type=int, default=400, help="questions for the throughput runs")
    parser.add_argument("--faults", type=int, default=400, help="questions for the fault runs")
    parser.add_argument("--memory", type=int, default=10_000, help="lines of the smaller memory input (and 10x)")
    parser.add_argument("--chunk-size", default="64", help="for the fault runs: small, so that they are mid-run")
    add_run_args(parser, output_required=False)
    args = parse_args(parser)
    dev = load_squad(args.data)
    sizes = {"identical": args.identical, "throughput": args.throughput, "faults": args.faults}
    with tempfile.TemporaryDirectory(prefix="dtb-scale-out-") as tmp:
        work = Path(tmp)
        inputs = {name: write_questions(dev, work / f"{name}.jsonl", n) for name, n in sizes.items()}
        result = {
            "machine": f"{os.cpu_count()} CPUs, shared with other jobs (load average before each run below); "
            f"torch {torch.__version__}, ray {version('ray')}",
            "sizes": {**sizes, "memory": [args.memory, 10 * args.memory]},
            "identical": identical(args.model, inputs["identical"], work),
            "throughput": throughput(args.model, inputs["throughput"], work, max(1, args.throughput // 8)),
            "faults": {
                "Ray: one actor killed": kill_an_actor(
                    args.model, inputs["faults"], work / "f1.jsonl", args.faults, args.chunk_size
                ),
                "Ray: driver killed, then --resume": kill_the_driver(
                    args.model, inputs["faults"], work / "f2.jsonl", args.faults, args.chunk_size, "--ray"
                ),
                "1 process: killed, then --resume": kill_the_driver(
                    args.model, inputs["faults"], work / "f3.jsonl", args.faults, args.chunk_size, "--threads", "2"
                ),
            },
            "memory": memory(dev, work, args.memory),
            "command": "python " + " ".join(sys.argv),
        }
    show_result(args.output, markdown(result), result, args.model)


if __name__ == "__main__":
    main()
