"""The last copy of the CPU transforms, channels-last T×3×S×S frames → 3×T×S×S, two ways in one run.

One thread, the K400 recipe's clip (8 frames, crop 224): torch's `permute(...).contiguous()`
against `stadapt.data.transforms.channels_first` (NumPy's copy), for a training clip (as it
leaves the resize, and mirrored) and for an eval item's 3 spatial views; and the whole
TrainTransform of such a clip from 340×256 frames, for scale.

    python -m benchmarks.clip_layout [--out benchmarks/results/clip-layout-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Callable

import numpy as np
import torch

import stadapt
from stadapt.bench.results import cpu_name, now, write_result
from stadapt.data.transforms import TrainTransform, channels_first, spatial_crops

REPEATS = 300


def ms_per_call(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round(1000 * (time.perf_counter() - start) / repeats, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/clip-layout-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = stadapt.load_recipe("k400_vitb", ["model.pretrained=none"]).data
    t, s = data.num_frames, data.crop
    generator = torch.Generator().manual_seed(0)
    resized = torch.randint(0, 256, (t, s, s, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    wide = torch.randint(0, 256, (t, s, 298, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    cases = {"training clip": [resized], "training clip, mirrored": [resized.flip(-1)],
             "eval item, 3 spatial views": spatial_crops(wide, s, 3)}
    rows: dict[str, Any] = {}
    for name, clips in cases.items():
        reference = torch.stack([c.permute(1, 0, 2, 3).contiguous() for c in clips])
        assert torch.equal(channels_first(clips), reference) and channels_first(clips).is_contiguous()
        torch_ms = ms_per_call(lambda clips=clips: torch.stack([c.permute(1, 0, 2, 3) for c in clips]))
        numpy_ms = ms_per_call(lambda clips=clips: channels_first(clips))
        rows[name] = {"torch_ms": torch_ms, "channels_first_ms": numpy_ms, "ratio": round(torch_ms / numpy_ms, 2)}
    frames = [torch.randint(0, 256, (3, 256, 340), dtype=torch.uint8, generator=generator) for _ in range(t)]
    transform = TrainTransform(data)
    rng = np.random.default_rng(0)
    result = {
        "benchmark": "clip layout",
        "cases": rows,
        "train_transform_ms": ms_per_call(lambda: transform(frames, rng), 100),
        "threads": 1,
        "device": "cpu",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "date": now(),
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
