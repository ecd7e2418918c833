"""What produced a result: date, git commit, model hash, package versions, CPU and its instruction sets.

Every benchmark result records these, so that a number can be traced to the code, the weights and the
machine that made it, and figures from different machines are never compared by accident.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

# The instruction sets that decide which kernels run: native bf16 and VNNI change what is fastest.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
PACKAGES = (
    "torch",
    "tokenizers",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxruntime",
    "optimum-intel",
    "openvino",
)
WEIGHT_FILES = ("model.safetensors", "model.sparse.safetensors", "pytorch_model.bin")


def provenance(model_dir: str | os.PathLike | None = None, device: str = "cpu") -> dict:
    """Everything a result file records about how it was made."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "model_sha256": None if model_dir is None else model_sha256(model_dir),
        "machine": machine(device),
        "versions": versions(),
    }


def provenance_line(found: dict) -> str:
    """One markdown line of `provenance`'s record, for the top of a result table."""
    machine, model = found["machine"], found["model_sha256"]
    flags = " ".join(machine["cpu_flags"]) or "none of " + ", ".join(CPU_FLAGS)
    return (
        f"Measured {found['date']} at commit {found['git_commit'] or 'unknown (not a git checkout)'}"
        f"{'' if model is None else f', model sha256 {model}'}; {machine['cpu']} ({machine['cpus']} CPUs, "
        f"torch capability {machine['cpu_capability']}, flags: {flags}); torch {found['versions']['torch']}."
    )


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, `+dirty` if it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def model_sha256(model_dir: str | os.PathLike) -> str | None:
    """sha256 of the checkpoint's weights file (as `sha256sum model.safetensors` prints it); None if none."""
    for name in WEIGHT_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            return digest.hexdigest()
    return None


def machine(device: str = "cpu") -> dict:
    """The CPU by name and instruction sets (and the GPU, on one), as `lscpu` and torch see them."""
    flags = cpu_flags()
    found = {
        "cpu": cpu_model(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if torch.device(device).type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("AMD EPYC", "Intel(R) Xeon(R) ..."), else the platform's word."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def versions() -> dict:
    """Versions of every package a system may use (None: not installed)."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found
