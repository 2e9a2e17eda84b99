"""What machine, software and command produced a result (stated next to every number)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from typing import Any


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str | None = None) -> dict[str, Any]:
    """Machine facts: CPU, cores, RAM, GPU, OS and library versions."""
    import psutil
    import torch
    import transformers

    facts: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def command_line() -> str:
    """The command as typed: ``python -m benchmarks ...``."""
    args = sys.argv[1:]
    return "python -m benchmarks " + " ".join(shlex.quote(a) for a in args)


def now() -> str:
    """The current UTC time, ISO 8601 to the minute."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
