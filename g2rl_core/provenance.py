"""Where a result came from: the machine, the software, the settings that decide its bits, its wall time.

Every ``g2rl`` command (and the analysis modules' ``main``) writes ``run_info.json`` into its output
directory: the machine (CPU model, logical cores, the CPU instruction set torch dispatched to, the
BLAS build), the thread count, the library versions, the command line and its wall time. The report
gathers them into ``results/README.md``, so a table names the machine it came from and where the
pipeline's time went.

What decides the bits of a CPU run, besides the code, the data and the settings:

- **threads**: BLAS and torch split reductions by thread; another count sums in another order.
  One setting, the profile's ``train.threads``, fixes it for every command (``--threads`` overrides).
- **the instruction set**: MKL and torch's own vectorized kernels (softmax, exp, reductions) pick
  an AVX2 or an AVX-512 code path at run time, and the two round differently. ``PINNED_CPU_ENV``
  pins every machine to the AVX2 paths (any x86-64 CPU of the last ten years has them).
  ``pin_cpu_paths`` sets it at the start of every ``g2rl`` command, analysis module and notebook
  (``pipeline.notebook.context``), so plain ``dvc repro`` and ``dvc exp run`` pin too: torch reads
  ``ATEN_CPU_CAPABILITY`` and MKL its variables at their first kernel, not at import (checked: the
  same bits whether they are set before ``import torch`` or after it, before any tensor work).
- **library versions**: ``requirements/lock.txt``, installed by ``scripts/setup.sh``.

What stays machine-dependent: a CPU without AVX2, another BLAS (an ARM build has no MKL), or GPU
kernels. The README's "Reproducibility" section states what the suite promises.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from g2rl_core.errors import G2RLError

# Environment that pins the CPU code paths (MKL's conditional numerical reproducibility, torch's
# kernel dispatch, oneDNN's ISA cap, no MKL thread-count changes at run time).
PINNED_CPU_ENV = {
    "MKL_CBWR": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
VERSIONED = ("torch", "transformers", "tokenizers", "math-verify", "sympy", "numpy", "safetensors", "vllm", "trl")
RUN_INFO = "run_info.json"
RUN_INFO_MAX_BYTES = 1 << 20  # a record is about 1 kB; a larger file is not one


def can_pin() -> bool:
    """Whether this CPU takes ``PINNED_CPU_ENV``: x86-64 with AVX2 and FMA (without them torch would die
    of an illegal instruction; ARM builds have no MKL)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return "avx2" in flags and "fma" in flags


def pin_cpu_paths() -> bool:
    """Set every ``PINNED_CPU_ENV`` variable the environment leaves unset, on a CPU that can take them.

    Call it before any tensor work. Returns whether the paths are pinned; ``run_info.json`` records the
    values in force either way.
    """
    if not can_pin():
        return False
    for key, value in PINNED_CPU_ENV.items():
        os.environ.setdefault(key, value)
    return True


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op CPU threads (None: keep torch's default); returns the count in use."""
    import torch

    if threads is not None:
        if threads < 1:
            from g2rl_core.errors import ConfigError

            raise ConfigError(f"threads = {threads} must be >= 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_info() -> dict:
    """The facts that decide a CPU run's bits and speed, as JSON-ready values."""
    import torch

    mkl = re.search(r"Math Kernel Library Version (\S+)", torch.__config__.parallel_info())
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": f"MKL {mkl.group(1)}" if mkl else "no MKL",
        "threads": torch.get_num_threads(),
        "pinned_env": {key: os.environ.get(key) for key in PINNED_CPU_ENV},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def write_run_info(out: str | Path, command: str, seconds: float, *, resumable: bool = False) -> dict:
    """Write ``<out>/run_info.json`` (the machine, the command line and its wall time) and return its record.

    ``resumable`` (training): a record that earlier processes of the same command line left in ``out``
    belongs to the same run, resumed from its checkpoint (the engines delete the record whenever a
    run starts afresh: ``forget_run_info``), so ``wall_seconds`` is the total over the processes and
    ``processes`` counts them. Otherwise the record is this process's alone. The record is written
    when a command ends, so a process that is killed leaves none and its time is not counted.
    """
    path = Path(out) / RUN_INFO
    argv, total, processes = sys.argv[1:], seconds, 1
    if resumable and path.is_file():
        if path.stat().st_size > RUN_INFO_MAX_BYTES:
            raise G2RLError(f"{path}: {path.stat().st_size} bytes, not a run_info record; delete it")
        try:
            earlier = json.loads(path.read_text())
            same_run = earlier["command"] == command and earlier["argv"] == argv
            if same_run:
                total += float(earlier["wall_seconds"])
                processes += int(earlier.get("processes", 1))
        except (UnicodeDecodeError, KeyError, TypeError, ValueError, OverflowError, RecursionError) as err:
            raise G2RLError(f"{path}: not a run_info record ({type(err).__name__}); delete it") from None
    record = {"command": command, "argv": argv, "wall_seconds": round(total, 1), "processes": processes}
    record |= machine_info()
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def forget_run_info(out: str | Path) -> None:
    """Delete ``<out>/run_info.json``: the run in ``out`` starts afresh, so earlier processes' time is not its."""
    (Path(out) / RUN_INFO).unlink(missing_ok=True)


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
