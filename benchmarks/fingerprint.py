"""The machine fingerprint a benchmark run records: CPU, memory, GPUs, torch threads, versions, load."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def fingerprint() -> dict:
    import psutil
    import torch

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "ray", "fastapi", "gradio", "httpx", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # an optional package missing must not stop the report
            versions[name] = None
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel": torch.__config__.parallel_info().splitlines()[:6],
        "versions": versions,
        "argv": sys.argv,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }

