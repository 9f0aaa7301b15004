"""Size, fidelity and loader speed of the frame store's encoding options, in one run.

For each data set (the K400-like synthetic set of `prepare synthetic --frames 300 --size
340x256`, and a textured one: a photograph panned and zoomed with sensor noise, whose JPEGs
are as large as those of real footage), the store is written with each option in turn and
`stadapt bench loader` measures it: `store_gb_per_hour`, `store_psnr_db` (against the source
decoded again and scaled to the stored size) and the loader against the reference loader.

    python -m benchmarks.store_options [--work /tmp/store-options] [--out benchmarks/results/store-options-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from stadapt.data.encode import write_video
from stadapt.data.manifest import PreparedDataset
from stadapt.data.store import write_store
from stadapt.fileio import atomic_write_text
from stadapt.loader_bench import bench_loader
from stadapt.recipe import load_recipe

# (label, short side, JPEG quality, chroma); the first is the format-1 store's encoding.
OPTIONS = [("q90-420 (format 1)", 256, 90, "420"), ("q85-420", 256, 85, "420"), ("q80-420", 256, 80, "420"),
           ("q75-420", 256, 75, "420"), ("q90-444", 256, 90, "444"), ("q85-444", 256, 85, "444"),
           ("q85-420 short side 224", 224, 85, "420")]
STADAPT = [sys.executable, "-m", "stadapt"]


def textured_frames(frames: int, width: int, height: int, seed: int) -> np.ndarray:
    """matplotlib's sample photograph, slowly panned and zoomed, with Gaussian noise of σ = 3."""
    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    image = np.asarray(photo)
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = np.empty((frames, height, width, 3), np.uint8)
    phase = rng.uniform(0, 2 * np.pi)
    for t in range(frames):
        zoom = 0.9 / (1.0 + 0.3 * t / frames)
        bw, bh = int(w * zoom), int(h * zoom)
        x = int((w - bw) * (0.5 + 0.45 * np.sin(t / 40 + phase)))
        y = int((h - bh) * (0.5 + 0.45 * np.cos(t / 55 + phase)))
        crop = Image.fromarray(image[y:y + bh, x:x + bw]).resize((width, height), Image.BILINEAR)
        out[t] = np.clip(np.asarray(crop, np.float32) + rng.normal(0, 3, (height, width, 3)), 0, 255)
    return out


def prepare(work: Path, name: str) -> Path:
    videos, prepared = work / name / "videos", work / name / "prepared"
    if not (prepared / "train.csv").is_file():
        if name == "synthetic":
            subprocess.run([*STADAPT, "prepare", "synthetic", str(videos), "--out", str(prepared), "--classes", "4",
                            "--videos-per-class", "4", "--frames", "300", "--size", "340x256"], check=True)
        else:
            for k in range(8):
                write_video(videos / f"class{k % 2}" / f"photo_{k}.mp4", textured_frames(300, 340, 256, k))
            subprocess.run([*STADAPT, "prepare", "folder", str(videos), "--out", str(prepared)], check=True)
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/store-options"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/store-options-cpu.json"))
    parser.add_argument("--clips", type=int, default=96)
    args = parser.parse_args()
    results = []
    for name in ("synthetic", "textured"):
        prepared = PreparedDataset.open(prepare(args.work, name))
        samples = prepared.samples("train") + prepared.samples("val")
        recipe = load_recipe("k400_vitb", [f"data.root={prepared.root}"])
        for label, short_side, quality, chroma in OPTIONS:
            write_store(prepared.root, samples, short_side=short_side, workers=os.cpu_count() or 1,
                        quality=quality, chroma=chroma)
            result = bench_loader(recipe, workers=1, source="prepared", num_clips=args.clips, reference_clips=6,
                                  rounds=2, recipe_path="k400_vitb")
            row = {"data": name, "option": label, **{k: v for k, v in result.items() if k.startswith("store_")},
                   **{k: result[k] for k in ("clips_per_s_per_worker", "reference_clips_per_s_per_worker",
                                             "speedup_vs_reference", "cpu_speedup_vs_reference")}}
            print(json.dumps(row), flush=True)
            results.append(row)
    meta = {k: result[k] for k in ("cpu", "cpu_count", "versions")}
    out = {"benchmark": "store options", "rows": results, **meta, "device": "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
