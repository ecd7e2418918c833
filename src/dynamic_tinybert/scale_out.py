"""The `dtb answer` job on Ray: the same chunks answered by a pool of actors, each holding the model once.

The driver plans the job and owns the output exactly as `batch_job.run_job` does; only the chunks travel
through Ray Data, as small byte-range records, to `map_batches` over an actor pool. Each actor reads its
chunk's lines from the input itself, so on a cluster of several machines the input must be readable at the
same path on every node (a shared filesystem), and the package and model installed on each. An actor that
dies mid-chunk is restarted and its chunk retried by Ray; nothing reaches the output until a chunk's answers
come back whole, so every id is still written once. Ray is imported only here, and only when a job runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from .batch_job import AnswerLog, Chunk, JobInputError, JobPlan, JobSummary, answer_chunk, check_options, plan_job

LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # a local cluster's shared-memory store: the job moves only small chunks


class ChunkAnswerer:
    """A Ray Data actor: loads the model once, then answers one chunk per call."""

    def __init__(
        self,
        model: str,
        revision: str | None,
        device: str,
        precision: str,
        engine: str,
        threads: int,
        input: str,
        options: dict,
    ) -> None:
        import torch

        from .pipeline import QuestionAnswerer
        from .runtime import return_freed_memory

        torch.set_num_threads(threads)
        return_freed_memory()  # an actor answers chunk after chunk: flat memory, as `dtb answer` in one process
        self.qa = QuestionAnswerer.from_pretrained(
            model, revision=revision, device=device, precision=precision, engine=engine
        )
        self.input, self.options = input, options

    def __call__(self, batch: dict) -> dict:
        lines, counts = [], []
        for row in range(len(batch["start"])):
            numbers = (int(batch[key][row]) for key in ("start", "end", "first_line", "questions"))
            chunk = Chunk(*numbers, skip=tuple(int(n) for n in batch["skip"][row]))
            lines.append(answer_chunk(self.qa, self.input, chunk, **self.options))
            counts.append(chunk.questions)
        return {"lines": np.array(lines, dtype=object), "questions": np.array(counts)}


def start_ray(address: str | None = None) -> float:
    """Start a local Ray instance (None) or join the cluster at `address`; the seconds it took."""
    import ray

    started = time.perf_counter()
    settings = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address is None:
        settings["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
    ray.init(address=address, **settings)
    return time.perf_counter() - started


def run_job_on_ray(
    model: str,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    engine: str = "auto",
    actors: int = 2,
    threads_per_actor: int = 1,
    chunk_size: int = 1024,
    resume: bool = False,
    address: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[JobPlan], None] | None = None,
    **options,
) -> JobSummary:
    """`batch_job.run_job` with the answering spread over `actors` Ray actors of `threads_per_actor` threads.

    Starts a local Ray instance, or joins the cluster at `address` ("auto", "ray://host:10001", ...), unless
    this process is already connected. The summary's `ray_start_s` is the start-up, apart from `seconds`.
    """
    import ray

    from .pipeline import QuestionAnswerer

    if actors < 1 or threads_per_actor < 1:
        raise ValueError(f"actors and threads_per_actor must be >= 1, got {actors} and {threads_per_actor}")
    # the model and options are checked here, once, rather than as an error inside every actor
    check_options(
        QuestionAnswerer.from_pretrained(model, revision=revision, device=device, precision=precision, engine=engine),
        options,
    )
    with AnswerLog(output, resume) as log:
        plan = plan_job(input, chunk_size, log.done)
        if on_plan is not None:
            on_plan(plan)
        ray_start_s = 0.0 if ray.is_initialized() else start_ray(address)
        started = time.perf_counter()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.raise_original_map_exception = True  # a bad line's JobInputError, not Ray's wrapper of it
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # the library never prints; errors are raised
        if plan.chunks:
            rows = [{**asdict(chunk), "skip": list(chunk.skip)} for chunk in plan.chunks]
            answered = ray.data.from_items(rows).map_batches(
                ChunkAnswerer,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=threads_per_actor,
                num_gpus=1 if device.startswith("cuda") else None,
                fn_constructor_kwargs=dict(
                    model=str(model),
                    revision=revision,
                    device=device,
                    precision=precision,
                    engine=engine,
                    threads=threads_per_actor,
                    input=str(os.path.abspath(input)),
                    options=options,
                ),
            )
            try:
                for row in answered.iter_rows():
                    log.append(row["lines"])
                    if progress is not None:
                        progress(int(row["questions"]))
            except JobInputError as e:  # raised in an actor: Ray's wrapper, with Ray's notes below the line
                raise JobInputError(str(getattr(e, "cause", e)).splitlines()[0]) from None
    summary = JobSummary(plan.total, plan.pending, plan.done, time.perf_counter() - started)
    summary.extra.update(ray_start_s=round(ray_start_s, 2), actors=actors, threads_per_actor=threads_per_actor)
    return summary
