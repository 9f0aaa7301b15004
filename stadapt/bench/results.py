"""What every benchmark result records besides its figures, and where the result file goes.

A figure is only comparable with another measured on the same machine and libraries, so
each result names its device and library versions and the time it was taken, and is
written atomically as JSON under benchmarks/results/ (docs/performance.md).
"""

from __future__ import annotations

import datetime
import importlib
import json
import platform
from pathlib import Path
from typing import Any, Optional

import torch

from stadapt.errors import StadaptError
from stadapt.fileio import atomic_write_text

RESULTS_DIR = Path("benchmarks/results")


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it, else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def versions(*names: str) -> dict[str, Optional[str]]:
    """{name: version} of "python", "cuda" (None without CUDA) and importable packages."""
    found: dict[str, Optional[str]] = {}
    for name in names:
        if name == "python":
            found[name] = platform.python_version()
        elif name == "cuda":
            found[name] = torch.version.cuda
        else:
            found[name] = importlib.import_module(name).__version__
    return found


def now() -> str:
    """The local time with its UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_result(result: dict[str, Any], out: Optional[str | Path], *name: str) -> Path:
    """Write `result` atomically to `out`, or to benchmarks/results/<name parts>-<time>.json."""
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS_DIR / f"{'-'.join(name)}-{stamp}.json"
    out = Path(out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return out


def read_result(path: Path, key: str) -> dict[str, Any]:
    """A benchmark JSON that must hold `key`; a one-line error otherwise."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StadaptError(f"{path}: not a readable benchmark result ({exc})") from None
    if not isinstance(result, dict) or result.get(key) is None:
        raise StadaptError(f"{path}: no {key!r} in it; is it the right kind of benchmark result?")
    return result


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    """numerator / denominator to 4 decimals; None when either is missing (or the denominator 0)."""
    if numerator is None or not denominator:
        return None
    return round4(numerator / denominator)


def round4(value: float) -> float:
    return round(value, 4)
