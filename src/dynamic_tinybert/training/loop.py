"""The one training loop: fine-tuning, distillation and LengthDrop differ only in the objective plugged in.

AdamW with a linear schedule and warmup, gradient clipping and accumulation, bf16 autocast (CUDA, or CPUs with bf16),
length-bucketed batches, DistributedDataParallel under torchrun (NCCL on GPUs, gloo on CPUs), and optionally
sparse encoder weights (magnitude pruning on a cubic schedule, or a locked sparsity pattern). Nothing is
lost: every `save_every` steps and at each epoch's end a checkpoint (weights, optimiser, schedule, RNG,
position in the data) is written atomically, and `resume=True` continues from the latest one exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from ..checkpoint import save_checkpoint
from ..evaluate import evaluate
from ..fileio import atomic_write_text
from ..model import BertForQuestionAnswering
from ..pipeline import QuestionAnswerer
from ..precision import warn_if_bf16_is_emulated
from ..squad import SquadDataset
from .data import Features, epoch_batches, iterate
from .objectives import Objective
from .pruning import Pruner, PruningSchedule

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainSettings:
    output_dir: Path
    epochs: int = 2
    max_steps: int | None = None  # stop (and end the learning-rate schedule) after this many optimiser steps
    batch_size: int = 32  # windows per forward pass and process; an optimiser step sees grad_accum of them
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 42
    save_every: int = 500  # steps between checkpoints (one is also written at each epoch's end)
    log_every: int = 20
    eval_batch_size: int = 64
    max_answer_len: int = 30  # for the held-out evaluation
    # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16" also on CPUs with native bf16 (2x+ faster there)
    precision: str = "auto"
    pruning: PruningSchedule | None = None  # prune the encoder's Linear weights to a target sparsity
    lock_sparsity: bool = False  # keep the encoder's zeros zero (pruning always does)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        for name in ("epochs", "batch_size", "grad_accum", "save_every", "log_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def uses_bf16(self, device_type: str) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def autocast(self, device: torch.device):
        """Mixed precision for the forward passes: master weights, optimiser and losses stay fp32."""
        if device.type == "cpu" and self.uses_bf16("cpu"):
            warn_if_bf16_is_emulated("training precision bf16")
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.uses_bf16(device.type) else nullcontext()


@dataclass
class Position:
    """Where training stands: the next micro-batch to run and the optimiser steps taken."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def train(
    model: BertForQuestionAnswering,
    tokenizer: Tokenizer,
    objective: Objective,
    features: Features,
    settings: TrainSettings,
    eval_set: SquadDataset | None = None,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train `model` in place on `features`; returns the last held-out evaluation (EM/F1) if any.

    Writes into settings.output_dir: `checkpoints/` (resumable state), `metrics.jsonl` (one JSON object
    per log line and evaluation) and, at the end, `model/` in the Hugging Face layout.
    """
    longest = int(features.lengths.max()) if len(features) else 0
    if longest > model.config.max_position_embeddings:
        raise ValueError(
            f"training windows of {longest} tokens exceed the model's {model.config.max_position_embeddings} "
            "positions: lower max_seq_len"
        )
    rank, world_size, device = start_distributed()
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed + rank)
    model.to(device).train()
    objective.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    extra = list(objective.trainable.parameters()) if objective.trainable is not None else []
    optimizer = torch.optim.AdamW(
        param_groups(model, objective.trainable, settings.weight_decay), lr=settings.learning_rate, eps=1e-8
    )
    batches_per_epoch = len(epoch_batches(features.lengths, settings.batch_size, settings.seed, 0, rank, world_size))
    if batches_per_epoch == 0:
        raise ValueError(f"{len(features)} training windows make no batch of {settings.batch_size} per process")
    steps_per_epoch = -(-batches_per_epoch // settings.grad_accum)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    warmup = int(settings.warmup_ratio * total_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)),
    )
    if settings.pruning is not None and settings.pruning.end > total_steps:
        raise ValueError(
            f"pruning ends at step {settings.pruning.end}, after the run's last step {total_steps}: "
            f"the model would never reach sparsity {settings.pruning.target}"
        )
    position = Position()
    if resume:
        position = load_latest(out / "checkpoints", model, objective, optimizer, schedule, device)
    # masks from the weights' zeros: the starting model's, or exactly those a resumed checkpoint was trained with
    pruner = Pruner(model, settings.pruning) if settings.pruning is not None or settings.lock_sparsity else None
    wrapped = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if world_size > 1 else model
    autocast = settings.autocast(device)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    log = MetricsLog(out / "metrics.jsonl", enabled=rank == 0)
    bar = tqdm(total=total_steps, initial=position.step, desc="train", unit="step", disable=None if rank == 0 else True)
    evaluation: dict = {}
    window_loss, window_batches, window_examples, window_started = 0.0, 0, 0, time.perf_counter()

    for epoch in range(position.epoch, settings.epochs):
        if position.step >= total_steps:  # a finished run, resumed
            break
        batches = epoch_batches(features.lengths, settings.batch_size, settings.seed, epoch, rank, world_size)
        first = position.batch if epoch == position.epoch else 0
        for index, batch in enumerate(iterate(features, batches, first, pad_id), start=first):
            batch = batch.to(device)
            closes_step = (index + 1) % settings.grad_accum == 0 or index + 1 == len(batches)
            group_start = index - index % settings.grad_accum
            group_size = min(settings.grad_accum, len(batches) - group_start)  # an epoch's last group may be short
            passes = objective.passes(wrapped, batch, position.step)
            for k, run_pass in enumerate(passes):
                syncs = closes_step and k == len(passes) - 1
                with autocast, nullcontext() if syncs or world_size == 1 else wrapped.no_sync():
                    result = run_pass()
                (result.loss / group_size).backward()
                window_loss += result.loss.item()
            window_batches += 1
            window_examples += len(batch) * world_size
            if not closes_step:
                continue
            if world_size > 1:
                for p in extra:  # the objective's own weights are not inside DDP
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world_size
            torch.nn.utils.clip_grad_norm_(parameters + extra, settings.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            position = Position(epoch, index + 1, position.step + 1)
            if pruner is not None:
                pruner.step(position.step)
            bar.update(1)
            if position.step % settings.log_every == 0:
                seconds = time.perf_counter() - window_started
                entry = {
                    "step": position.step,
                    "epoch": epoch + (index + 1) / len(batches),
                    "loss": window_loss / window_batches,
                    "lr": schedule.get_last_lr()[0],
                    "examples_per_second": window_examples / seconds,
                }
                if pruner is not None:
                    entry["sparsity"] = pruner.sparsity()
                log.write(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}")
                window_loss, window_batches, window_examples, window_started = 0.0, 0, 0, time.perf_counter()
            if position.step % settings.save_every == 0 and index + 1 < len(batches):  # epoch ends save below
                save_state(out / "checkpoints", position, model, tokenizer, objective, optimizer, schedule, rank)
            if on_step is not None:
                on_step(position.step)
            if position.step >= total_steps:  # max_steps reached within the epoch
                break
        epoch_done = position.batch == len(batches)
        if epoch_done:
            position = Position(epoch + 1, 0, position.step)
        if eval_set is not None and rank == 0:
            evaluation = evaluate_held_out(model, tokenizer, eval_set, settings)
            epochs_trained = epoch + 1 if epoch_done else epoch + position.batch / len(batches)
            log.write({"step": position.step, "epoch": epochs_trained, "eval": evaluation})
            model.train()
        save_state(out / "checkpoints", position, model, tokenizer, objective, optimizer, schedule, rank)
    bar.close()
    if rank == 0:
        save_checkpoint(model, tokenizer, out / "model")
        atomic_write_text(out / "train_settings.json", json.dumps(asdict(settings), default=str, indent=2))
    if world_size > 1:
        dist.barrier()
    return evaluation


def start_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device): under torchrun, join the process group; otherwise one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    return dist.get_rank(), world_size, torch.device("cpu")


def param_groups(model: nn.Module, extra: nn.Module | None, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on biases, LayerNorms or embeddings' padding."""
    decay, no_decay = [], []
    for module in (model, extra):
        if module is None:
            continue
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate_held_out(model: nn.Module, tokenizer: Tokenizer, eval_set: SquadDataset, settings: TrainSettings) -> dict:
    qa = QuestionAnswerer(model, tokenizer, batch_size=settings.eval_batch_size, max_answer_len=settings.max_answer_len)
    summary = evaluate(qa, eval_set).summary()
    return {
        k: v for k, v in summary.items() if k in ("exact_match", "f1", "exact", "HasAns_f1", "NoAns_f1", "questions")
    }


class MetricsLog:
    """metrics.jsonl: appended one JSON object per line, so a resumed run continues the same file."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, entry: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")


def save_state(
    directory: Path,
    position: Position,
    model: BertForQuestionAnswering,
    tokenizer: Tokenizer,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
) -> None:
    """Write checkpoints/step-N atomically (a temporary folder renamed into place), then point `latest` at it.

    The folder is also a model checkpoint in the Hugging Face layout, so `dtb eval --model .../step-N`
    measures a run while it trains.
    """
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"step-{position.step}"
        tmp = directory / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_checkpoint(model, tokenizer, tmp)
        if objective.trainable is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in objective.trainable.state_dict().items()}
            save_file(state, tmp / "objective.safetensors")
        torch.save(
            {
                "position": asdict(position),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "trainer.pt",
        )
        shutil.rmtree(directory / name, ignore_errors=True)
        os.replace(tmp, directory / name)
        atomic_write_text(directory / "latest", name)
        for old in sorted(directory.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def load_latest(
    directory: Path,
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> Position:
    """Restore the state `latest` points at; a run with no checkpoint yet starts from the beginning, and says so
    (a job that always resumes, after preemption, needs no first run without it)."""
    if not (directory / "latest").is_file():
        warnings.warn(f"resume: no checkpoint in {directory} yet; training starts from the beginning", stacklevel=2)
        return Position()
    folder = directory / (directory / "latest").read_text().strip()
    model.load_state_dict(load_file(folder / "model.safetensors", device=str(device)))
    if objective.trainable is not None:
        objective.trainable.load_state_dict(load_file(folder / "objective.safetensors", device=str(device)))
    state = torch.load(folder / "trainer.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng_cpu"].cpu())
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
    return Position(**state["position"])
