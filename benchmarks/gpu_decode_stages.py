"""Each stage of eval's GPU-decode path timed alone, on a prepared store, on one CUDA device.

Why: `stadapt eval --decode gpu` overlaps reading (loader workers), decoding (a thread:
nvJPEG, resize, crops) and the model; when the end-to-end rate falls short of the model's,
these rates say which stage or which lack of overlap costs it. Stages, at eval's batch of
32 videos of the K400 recipe's 3 views: the workers delivering JPEG bytes; `decode_jpeg` on
one batch (frames/s, also its host-side time: it returns only when its batch is done, and
from 2 and 4 threads at once); `decode_clips` (decode + resize + crops); the workers and the
decode thread together (`decoded_batches`).

    python benchmarks/gpu_decode_stages.py DATA_ROOT SPLIT --out FILE.json
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg

import stadapt
from benchmarks.eval_batches import arguments
from stadapt.bench.results import device_name, now, versions, write_result
from stadapt.data.dataset import build_dataset
from stadapt.data.gpu_decode import StoredJpegClips, batch_jpegs, collate_jpegs, decode_clips, decoded_batches

VIDEOS_PER_BATCH = 32  # eval's: 2 × train.batch_size 48 // 3 views
WORKERS = 4  # eval's most


def timed(fn: Callable[[], None], repeat: int, device: torch.device) -> float:
    """Seconds for `repeat` calls of fn, after one untimed call."""
    fn()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = arguments(__doc__)
    args = parser.parse_args()
    device = torch.device("cuda")
    recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none", f"data.root={args.root}",
                                               "data.source=prepared", "model.num_classes=4"])
    views = recipe.data.test_views.temporal * recipe.data.test_views.spatial
    dataset = build_dataset(recipe, args.split, train=False)

    def loader(workers: int) -> DataLoader:
        return DataLoader(StoredJpegClips(dataset), batch_size=VIDEOS_PER_BATCH, num_workers=workers,
                          collate_fn=collate_jpegs)

    def rate_of(batches, count: Callable, steps: int = 30) -> float:
        next(batches)
        start, n = time.perf_counter(), 0
        for _ in range(steps):
            n += count(next(batches))
        torch.cuda.synchronize(device)
        return n / (time.perf_counter() - start)

    batch = next(iter(loader(0)))
    jpegs = batch_jpegs(batch)
    frames = [f for video in jpegs for f in video]
    clips_per_batch = len(jpegs) * views
    repeat = 10

    def decode_from_threads(threads: int) -> float:
        def work() -> None:
            for _ in range(repeat):
                decode_jpeg(frames, device=device)
        pool = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        torch.cuda.synchronize(device)
        return threads * repeat * len(frames) / (time.perf_counter() - start)

    decode_jpeg(frames, device=device)
    torch.cuda.synchronize(device)
    host_start = time.perf_counter()
    decode_jpeg(frames, device=device)
    host_s = time.perf_counter() - host_start
    torch.cuda.synchronize(device)
    wall_s = time.perf_counter() - host_start
    result = {
        "benchmark": "gpu_decode_stages",
        "device_name": device_name(device),
        "versions": versions("stadapt", "torch", "torchvision", "cuda"),
        "date": now(),
        "videos_per_batch": len(jpegs),
        "frames_per_batch": len(frames),
        "views": views,
        "loader_only_clips_s": round(rate_of(iter(loader(WORKERS)), lambda b: len(b["index"]) * views), 1),
        "decode_jpeg_frames_s": round(repeat * len(frames) / timed(lambda: decode_jpeg(frames, device=device),
                                                                    repeat, device), 1),
        "decode_jpeg_host_ms": round(1000 * host_s, 2),
        "decode_jpeg_wall_ms": round(1000 * wall_s, 2),
        "decode_jpeg_frames_s_2_threads": round(decode_from_threads(2), 1),
        "decode_jpeg_frames_s_4_threads": round(decode_from_threads(4), 1),
        "decode_clips_clips_s": round(repeat * clips_per_batch / timed(
            lambda: decode_clips(jpegs, batch["ok"], recipe.data, device), repeat, device), 1),
        "loader_and_decode_thread_clips_s": round(rate_of(decoded_batches(loader(WORKERS), recipe.data, device),
                                                          lambda item: item[1].shape[0] * item[1].shape[1]), 1),
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
