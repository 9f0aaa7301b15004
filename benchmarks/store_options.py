"""Size, fidelity and loader speed of the frame store's encoding options, in one run.

For each data set (the K400-like synthetic set of `prepare synthetic --frames 300 --size
340x256`, and a textured one: a photograph panned and zoomed with sensor noise, whose JPEGs
are as large as those of real footage), the store is written with each option in turn and
`stadapt bench loader` measures it: `store_gb_per_hour`, `store_psnr_db` (against the source
decoded again and scaled to the stored size) and the loader against the reference loader.
The H.264 store (`--parts h264`, `prepare --decode --store h264`) is measured the same way,
in the same run as the JPEG store of format 2, and so are JPEG stores at a short side of 224
at qualities 80 to 70 (`--parts small`).
Short-GOP videos in a container (`--parts gop`, measured before that store was built) are
measured for size, PSNR and the decoding of a clip's 8 frames (seek to each frame's
keyframe, decode up to it), against the decoding alone of the same clips from the JPEG
store, one core.

    python -m benchmarks.store_options [--work /tmp/store-options] [--out benchmarks/results/store-options-cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import av
import matplotlib
import numpy as np
import PIL
import torch
from PIL import Image

from stadapt.bench.loader import bench_loader
from stadapt.bench.results import cpu_name
from stadapt.data.encode import write_video
from stadapt.data.manifest import PreparedDataset
from stadapt.data.sampling import clip_indices
from stadapt.data.store import FrameStore, write_store
from stadapt.fileio import atomic_write_text
from stadapt.recipe import load_recipe

# (label, short side, JPEG quality, chroma); the first is the format-1 store's encoding.
OPTIONS = [("q90-420 (format 1)", 256, 90, "420"), ("q85-420", 256, 85, "420"), ("q80-420", 256, 80, "420"),
           ("q75-420", 256, 75, "420"), ("q90-444", 256, 90, "444"), ("q85-444", 256, 85, "444"),
           ("q85-420 short side 224", 224, 85, "420")]
# The stored short side at eval's test_resize (224) at qualities below OPTIONS' 85 (`--parts small`).
SMALL_OPTIONS = [("q80-420 short side 224", 224, 80, "420"), ("q75-420 short side 224", 224, 75, "420"),
                 ("q70-420 short side 224", 224, 70, "420")]
GOPS = (4, 8, 16)  # keyframe intervals of the short-GOP videos measured before the H.264 store was built
H264_OPTIONS = [("H.264 store (format 3: GOP 4, crf 20, no B-frames)", 4),
                ("H.264 store, GOP 2 (format 3, crf 20, no B-frames)", 2),
                ("H.264 store, GOP 1: every frame a keyframe (format 3, crf 20)", 1)]
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


def decode_all(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def read_by_seeking(video: Path, indices: list[int]) -> list[np.ndarray]:
    """Each frame of `indices` (sorted, one per GOP at the clip's stride): seek to the keyframe
    before it and decode forward to it."""
    out = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        step = int(1 / (stream.average_rate * stream.time_base))  # pts per frame (constant rate)
        for index in indices:
            container.seek(index * step, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts >= index * step:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
    return out


def short_gop_store(prepared: PreparedDataset, samples: list, recipe, work: Path, gop: int,
                    clips: int) -> dict:
    """Size per hour and PSNR of each video re-encoded with keyframes every `gop` frames, and
    one core's clips/s decoding random training clips from it and from the JPEG store."""
    squared, values, size, seconds = 0.0, 0, 0, 0.0
    encoded = {}
    for sample in samples:
        source = decode_all(sample.path)
        path = write_video(work / f"gop{gop}" / f"{Path(sample.path).stem}.mp4", np.stack(source), gop=gop)
        again = decode_all(path)
        for a, b in zip(source, again):
            squared += float(np.square(a.astype(np.float64) - b).sum())
            values += a.size
        size += path.stat().st_size
        seconds += len(source) / 25
        encoded[sample.path] = (path, len(source))
    rng = np.random.default_rng(0)
    picks = []
    for _ in range(clips):
        path = samples[int(rng.integers(len(samples)))].path
        picks.append((path, sorted(clip_indices(recipe.data, encoded[path][1], rng, 1)[0].tolist())))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        for path, indices in picks:
            read_by_seeking(encoded[path][0], indices)
        video_s = time.process_time() - start
        store = FrameStore(prepared.root)
        start = time.process_time()
        for path, indices in picks:
            with store.open(path) as entry:
                entry.read(indices)
        jpeg_s = time.process_time() - start
    finally:
        torch.set_num_threads(torch_threads)
    mse = squared / values
    return {"store_gb_per_hour": round(size / seconds * 3600 / 1e9, 3),
            "store_psnr_db": round(float(10 * np.log10(255**2 / mse)), 2),
            "decode_clips_per_cpu_s": round(clips / video_s, 2),
            "jpeg_store_decode_clips_per_cpu_s": round(clips / jpeg_s, 2)}


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
    parser.add_argument("--parts", nargs="+", choices=("jpeg", "h264", "gop", "small"),
                        default=["jpeg", "h264", "gop"])
    args = parser.parse_args()
    results = []
    for name in ("synthetic", "textured"):
        prepared = PreparedDataset.open(prepare(args.work, name))
        samples = prepared.samples("train") + prepared.samples("val")
        recipe = load_recipe("k400_vitb", [f"data.root={prepared.root}"])
        if "jpeg" in args.parts:
            chosen = [(*option, "jpeg", 4) for option in OPTIONS]
        elif {"small", "h264"} & set(args.parts):  # beside the JPEG store as format 2 writes it, in the same run
            chosen = [(*OPTIONS[1], "jpeg", 4)]
        else:
            chosen = []
        if "small" in args.parts:
            chosen += [(*option, "jpeg", 4) for option in SMALL_OPTIONS]
        if "h264" in args.parts:
            chosen += [(label, 256, 85, "420", "h264", gop) for label, gop in H264_OPTIONS]
        for label, short_side, quality, chroma, codec, gop in chosen:
            write_store(prepared.root, samples, short_side=short_side, workers=os.cpu_count() or 1,
                        quality=quality, chroma=chroma, codec=codec, gop=gop)
            result = bench_loader(recipe, workers=1, source="prepared", num_clips=args.clips, reference_clips=6,
                                  rounds=2, recipe_path="k400_vitb")
            row = {"data": name, "option": label, **{k: v for k, v in result.items() if k.startswith("store_")},
                   **{k: result[k] for k in ("clips_per_s_per_worker", "reference_clips_per_s_per_worker",
                                             "speedup_vs_reference", "cpu_speedup_vs_reference")}}
            print(json.dumps(row), flush=True)
            results.append(row)
        if "gop" in args.parts:  # the JPEG store as format 2 writes it, then the short-GOP videos beside it
            write_store(prepared.root, samples, workers=os.cpu_count() or 1)
        for gop in GOPS if "gop" in args.parts else []:
            row = {"data": name, "option": f"H.264 GOP {gop}, crf 20 (not built)",
                   **short_gop_store(prepared, samples, recipe, args.work / name, gop, args.clips)}
            print(json.dumps(row), flush=True)
            results.append(row)
    meta = {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "av": av.__version__,
                         "pillow": PIL.__version__, "numpy": np.__version__}}
    out = {"benchmark": "store options", "rows": results, **meta, "device": "cpu",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
