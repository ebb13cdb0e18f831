"""What a result was measured on: device, driver, library versions, git commit. Nothing that names the host.

Recorded: CPU model and core count, total memory, OS and architecture, Python, torch and its CUDA build, the
GPU name, its memory, driver and compute capability, library versions, and the git commit (with a flag for
uncommitted changes). Not recorded: hostname, user, paths.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "tensorrt",
    "numpy",
    "ray",
    "cascade-trt",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


def collect(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device_type": device.type,
        "device": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "memory_total_bytes": _memory_total(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "git": git_state(),
    }
    if device.type == "cuda":
        env.update(_cuda_info(device))
    return env


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none): other work on the machine
    slows every backend, which a reader of the figures should be able to see."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    out["torch_cuda"] = torch.version.cuda or "none"
    return out


def git_state() -> dict[str, Any]:
    """Commit of the checkout the benchmark code runs from, and whether it had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": False}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_total() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _cuda_info(device: torch.device) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    info: dict[str, Any] = {
        "device": props.name,
        "gpu_memory_bytes": int(props.total_memory),
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": _nvidia_driver() or "unknown",
    }
    return info


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.stdout.strip() else None
