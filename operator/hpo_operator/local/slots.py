"""Where trials run on this machine: one slot per GPU (its ``CUDA_VISIBLE_DEVICES`` entry), else
shares of the CPU, each trial limited to its share of threads."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# More CPU slots than this rarely pay: trials then compete for memory and memory bandwidth.
MAX_DEFAULT_CPU_SLOTS = 8
# Present whenever the NVIDIA kernel driver is loaded.
NVIDIA_DRIVER = Path("/proc/driver/nvidia")

# The thread pools a trial may start; each is limited to its slot's share of the CPU.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass(frozen=True)
class Slot:
    """Where one trial runs: a GPU (its ``CUDA_VISIBLE_DEVICES`` entry) or a CPU slot."""

    number: int
    gpu: str | None
    threads: int

    def describe(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else f"CPU slot {self.number}"

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "gpu": self.gpu, "threads": self.threads}


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs trials may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    A ``CUDA_VISIBLE_DEVICES`` already set narrows the choice to its entries; otherwise
    ``nvidia-smi -L`` counts the GPUs, and torch does when nvidia-smi is not installed.
    """
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        valid = []
        for entry in entries:
            if entry.startswith("-"):
                break
            valid.append(entry)
        return valid
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return []
        if out.returncode != 0:
            return []
        count = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        return [str(i) for i in range(count)]
    # Without nvidia-smi ask torch, but only where an NVIDIA driver is loaded: importing torch
    # takes seconds, and without a driver there is no GPU to find.
    if not NVIDIA_DRIVER.exists():
        return []
    try:
        import torch
    except ImportError:
        return []
    try:
        return [str(i) for i in range(int(torch.cuda.device_count()))]
    except Exception:  # a broken CUDA install means no usable GPU, not a failed study
        return []


def default_cpu_slots(cores: int) -> int:
    """One single-threaded trial per core, up to MAX_DEFAULT_CPU_SLOTS.

    A trial's start (interpreter, imports, data loading) is single-threaded and small models gain
    little from a second thread, so on a 2-core machine two one-thread trials get more done than one
    two-thread trial; and ASHA prunes better with more trials in flight.
    """
    return max(1, min(cores, MAX_DEFAULT_CPU_SLOTS))


def make_slots(
    gpus: str, cpu_slots: int | None, *, cores: int | None = None, detected: Sequence[str] | None = None
) -> list[Slot]:
    """Slots from ``--gpus auto|N|0`` and ``--cpu-slots``; raises ValueError on an impossible ask."""
    cores = cpu_count() if cores is None else cores
    wanted: int | None
    if gpus == "auto":
        wanted = None
    else:
        try:
            wanted = int(gpus)
        except ValueError:
            raise ValueError(f"--gpus must be 'auto', 0 or a number of GPUs, got {gpus!r}") from None
        if wanted < 0:
            raise ValueError(f"--gpus must not be negative, got {wanted}")
    if cpu_slots is not None and cpu_slots < 1:
        raise ValueError(f"--cpu-slots must be at least 1, got {cpu_slots}")
    if wanted != 0:
        found = list(detect_gpus() if detected is None else detected)
        if wanted is not None and wanted > len(found):
            raise ValueError(
                f"--gpus {wanted} asks for more GPUs than the {len(found)} found "
                "(nvidia-smi -L, CUDA_VISIBLE_DEVICES); use --gpus 0 to run on the CPU"
            )
        use = found if wanted is None else found[:wanted]
        if use:
            threads = max(1, cores // len(use))
            return [Slot(i, gpu, threads) for i, gpu in enumerate(use)]
    n = cpu_slots if cpu_slots is not None else default_cpu_slots(cores)
    threads = max(1, cores // n)
    return [Slot(i, None, threads) for i in range(n)]
