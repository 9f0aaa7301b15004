"""Why eval's GPU decoding does not overlap the model, and which arrangement makes it overlap.

`stadapt eval --decode gpu` ran at the model's time plus the decoding's time per batch
(benchmarks/results/gpu-decode-stages-h200-20261202.json), although a thread decodes on a
side stream. This measures, on one CUDA device, with the batches read into memory first (no
loader workers in the way):

- `decode_host_ms_after_0.2s_queued_on`: host time of one `decode_clips` call issued right
  after ~0.2 s of matrix products were queued on the default stream, on a non-blocking stream,
  or nowhere. If the call returns only after the queued work, nvJPEG waits for it. (A
  non-blocking torch.cuda.Stream comes from the same pool as torchvision's decoder stream, so
  that case can land on the decoder's own stream.)
- the model alone and `decode_clips` alone, clips/s;
- eval's consumer loop (the compiled model with CUDA graphs, softmax of the 3 views, results
  to the host) fed by `decoded_batches`, in arrangements: as eval runs today (model on the
  default stream, results copied to the host every batch), the model on its own non-blocking
  stream, and the results kept on the device until the end;
- the device time of one `decode_clips` call by kernel (torch.profiler): what of the decoding
  competes with the model for the GPU's cores;
- candidate ways to compute the views (resize and crops) of `eval_views`: the antialiased
  resize in fp16 instead of fp32, and the resize as two matrix products (its weights taken
  from F.interpolate itself, each view's crop folded into them), each alone, against today's
  values, and in eval's consumer loop; and that loop fed by the real loader (4 workers);
- `who_waits`: in that loop, the main thread's wait for a decoded batch and the decode
  thread's time per batch, with Python's GIL switch interval at 5 ms (its default) or 0.5 ms,
  the JPEG buffers pinned or not, the decode thread's stream at the highest priority, and the
  model compiled without CUDA graphs.

    python -m benchmarks.gpu_decode_overlap DATA_ROOT SPLIT --out FILE.json
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import stadapt.data.gpu_decode as gpu_decode
from benchmarks.eval_batches import (
    STEPS,
    VIDEOS_PER_BATCH,
    arguments,
    clips_per_s,
    cuda_batches,
    eval_model,
    kernel_ms,
)
from stadapt.bench.results import device_name, now, versions, write_result
from stadapt.data.gpu_decode import batch_jpegs, collate_jpegs, decode_clips, decode_frames, decoded_batches
from stadapt.data.transforms import spatial_crops
from stadapt.model.runtime import autocast, maybe_compile
from stadapt.recipe import DataConfig


def queue_products(stream: torch.cuda.Stream, seconds: float, device: torch.device) -> None:
    """Queue about `seconds` of bf16 matrix products on `stream` (measured once, then repeated)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    with torch.cuda.stream(stream):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        a @ a
        end.record()
    end.synchronize()
    repeats = max(1, int(seconds * 1000 / start.elapsed_time(end)))
    with torch.cuda.stream(stream):
        for _ in range(repeats):
            a @ a


def views_fp16(frames: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """eval_views with the resize computed in fp16."""
    d = data
    n, total, channels, h, w = frames.shape
    short = min(h, w)
    size = (round(h * d.test_resize / short), round(w * d.test_resize / short))
    resized = F.interpolate(frames.flatten(0, 1).half(), size=size, mode="bilinear", antialias=True,
                            align_corners=False)
    frames = resized.round_().clamp_(0, 255).to(torch.uint8).view(n, total, channels, *size)
    clips = frames.view(n, d.test_views.temporal, d.num_frames, channels, *size)
    views = torch.stack(spatial_crops(clips, d.crop, d.test_views.spatial), dim=2)
    return views.permute(0, 1, 2, 4, 3, 5, 6).reshape(n, -1, channels, d.num_frames, d.crop, d.crop)


def resize_matrix(length: int, size: int, device: torch.device) -> torch.Tensor:
    """size×length: F.interpolate's antialiased bilinear weights along one axis (its response to each unit pixel)."""
    basis = torch.eye(length, dtype=torch.float64).view(length, 1, 1, length)
    return F.interpolate(basis, size=(1, size), mode="bilinear", antialias=True, align_corners=False)[:, 0, 0].T.to(
        device)


def views_matmul(frames: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """eval_views as rows · frame · columnsᵀ per view: fp16 operands (pixels are exact in fp16), fp32 results."""
    d = data
    n, total, channels, h, w = frames.shape
    short = min(h, w)
    size = (round(h * d.test_resize / short), round(w * d.test_resize / short))
    rows, cols = resize_matrix(h, size[0], frames.device), resize_matrix(w, size[1], frames.device)
    index = torch.arange(size[0] * size[1], device=frames.device).view(1, *size)
    crops = spatial_crops(index, d.crop, d.test_views.spatial)
    x = frames.reshape(-1, h, w).half()
    views = []
    for crop in crops:  # the crop's rows and columns of the resized frame
        r = rows[crop[0, :, 0] // size[1]].half()
        c = cols[crop[0, 0, :] % size[1]].half()
        tmp = torch.matmul(x, c.T).float()  # (F·3)×h×crop
        out = torch.matmul(r.float(), tmp)
        views.append(out.round_().clamp_(0, 255).to(torch.uint8).view(n, d.test_views.temporal, d.num_frames,
                                                                       channels, d.crop, d.crop))
    stacked = torch.stack(views, dim=2)
    return stacked.permute(0, 1, 2, 4, 3, 5, 6).reshape(n, -1, channels, d.num_frames, d.crop, d.crop)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--who-waits-only", action="store_true", help="only the models alone and `who_waits`")
    args = parser.parse_args()
    device, recipe, dataset, batches, views = cuda_batches(args)

    def decode(batch: dict[str, Any]) -> torch.Tensor:
        return decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, device)[0]

    waits: dict[str, float] = {}
    if not args.who_waits_only:
        # 1. Does decoding wait for work queued elsewhere on the device?
        side = torch.cuda.Stream(device)
        for where, stream in (("nothing queued", None), ("default stream", torch.cuda.default_stream(device)),
                              ("non-blocking stream", torch.cuda.Stream(device))):
            decode(batches[0])
            torch.cuda.synchronize(device)
            if stream is not None:
                queue_products(stream, 0.2, device)
            start = time.perf_counter()
            with torch.cuda.stream(side):
                decode(batches[0])
            waits[where] = round(1000 * (time.perf_counter() - start), 2)
            torch.cuda.synchronize(device)

    # 2. Each alone, and 3. eval's consumer loop in several arrangements.
    model, forward = eval_model(recipe, device)
    clips = decode(batches[0])

    plain = maybe_compile(model, True, device)  # compiled without CUDA graphs

    def model_step(x: torch.Tensor, graphs: bool = True) -> torch.Tensor:
        with torch.no_grad(), autocast(device, recipe.train.precision):
            out = (forward if graphs else plain)(x.flatten(0, 1))
        return F.softmax(out["label"].float(), dim=-1).view(x.shape[0], views, -1).mean(dim=1)

    def rate(step: Callable[[], int]) -> float:
        return clips_per_s(step, device)

    cycle = itertools.cycle(batches)
    model_alone = rate(lambda: model_step(clips).cpu().shape[0] * views)
    decode_alone = rate(lambda: decode(next(cycle)).shape[0] * views)

    def consumer(model_stream: torch.cuda.Stream | None, keep_on_device: bool, loader: Any = None) -> float:
        """eval's loop over decoded_batches of the in-memory batches (or of `loader`), clips/s."""
        batches_in = loader if loader is not None else itertools.islice(itertools.cycle(batches), STEPS + 8)
        source = decoded_batches(batches_in, recipe.data, device)
        kept: list[torch.Tensor] = []
        with torch.cuda.stream(model_stream) if model_stream is not None else contextlib.nullcontext():

            def step() -> int:
                _, x, _ = next(source)
                probs = model_step(x)
                kept.append(probs if keep_on_device else probs.cpu())
                return x.shape[0] * x.shape[1]

            result = rate(step)
        return result

    arrangements: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    candidates: dict[str, Any] = {}
    with_loader = None
    if not args.who_waits_only:
        for name, own_stream, keep in (("as eval today: default stream, results to the host every batch", False, False),
                                       ("model on its own non-blocking stream, results to the host every batch", True,
                                        False),
                                       ("default stream, results kept on the device", False, True),
                                       ("own stream, results kept on the device", True, True)):
            try:
                arrangements[name] = consumer(torch.cuda.Stream(device) if own_stream else None, keep)
            except Exception as exc:  # one arrangement failing should not lose the others' figures
                arrangements[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"

        # 4. Where decode_clips spends device time, and candidate views.
        profiles = {"decode_clips": kernel_ms(lambda: decode(batches[0]))}
        stacked = decode_frames(batch_jpegs(batches[0]), batches[0]["ok"], device).groups[0][1]
        today = gpu_decode.eval_views(stacked, recipe.data)
        profiles["eval_views today"] = kernel_ms(lambda: gpu_decode.eval_views(stacked, recipe.data))
        candidates: dict[str, Any] = {}
        original = gpu_decode.eval_views
        for name, fn in (("fp16 resize", views_fp16), ("matrix products", views_matmul)):
            try:
                diff = (fn(stacked, recipe.data).int() - today.int()).abs().float()
                profiles[f"eval_views, {name}"] = kernel_ms(lambda fn=fn: fn(stacked, recipe.data))
                gpu_decode.eval_views = fn  # clip_views looks it up at each call
                candidates[name] = {"levels_vs_today_mean": round(diff.mean().item(), 4),
                                    "levels_vs_today_max": diff.max().item(),
                                    "decode_alone_clips_s": rate(lambda: decode(next(cycle)).shape[0] * views),
                                    "with_model_clips_s": consumer(None, False)}
            except Exception as exc:
                candidates[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            finally:
                gpu_decode.eval_views = original

        # 5. The same loop fed by the real loader, as eval runs it.
        real_loader = DataLoader(dataset, batch_size=VIDEOS_PER_BATCH, num_workers=4, collate_fn=collate_jpegs)
        with_loader = consumer(None, False, real_loader)

    # 6. Which side waits in that loop: the model for batches, or the decode thread for the GIL?
    def diagnose(switch_interval: float, pinned: bool, loader: Any = None, priority: int = 0,
                 graphs: bool = True) -> dict[str, float]:
        """clips/s of the loop, the main thread's mean wait for a decoded batch and the decode
        thread's mean time between taking batches, with Python's GIL switch interval set and the
        JPEG buffers pinned or not."""
        pulls: list[float] = []
        waits: list[float] = []

        def timed_batches() -> Any:
            if loader is not None:
                source_batches: Any = loader
            else:
                chosen = [{**b, "jpegs": b["jpegs"].pin_memory()} for b in batches] if pinned else batches
                source_batches = itertools.islice(itertools.cycle(chosen), STEPS + 8)
            for batch in source_batches:
                pulls.append(time.perf_counter())
                yield batch

        old = sys.getswitchinterval()
        sys.setswitchinterval(switch_interval)
        try:
            source = decoded_batches(timed_batches(), recipe.data, device, priority=priority)

            def step() -> int:
                start = time.perf_counter()
                _, x, _ = next(source)
                waits.append(time.perf_counter() - start)
                model_step(x, graphs).cpu()
                return x.shape[0] * x.shape[1]

            clips_s = rate(step)
        finally:
            sys.setswitchinterval(old)
        gaps = [b - a for a, b in zip(pulls[4:], pulls[5:])]
        return {"clips_s": clips_s, "main_waits_for_a_batch_ms": round(1000 * sum(waits[3:]) / len(waits[3:]), 2),
                "decode_thread_ms_per_batch": round(1000 * sum(gaps) / max(1, len(gaps)), 2)}

    diagnosis: dict[str, Any] = {}
    high = torch.cuda.Stream.priority_range()[1]  # the highest priority: the smallest number
    for name, interval, pinned, priority, graphs in (
            ("today (switch interval 5 ms)", 0.005, False, 0, True),
            ("switch interval 0.5 ms", 0.0005, False, 0, True),
            ("pinned JPEG buffers", 0.005, True, 0, True),
            ("the decode thread's stream at the highest priority", 0.005, False, high, True),
            ("the model compiled without CUDA graphs", 0.005, False, 0, False),
            ("without CUDA graphs, decode stream at the highest priority", 0.005, False, high, False),
            ("switch interval 0.5 ms, pinned", 0.0005, True, 0, True)):
        try:
            diagnosis[name] = diagnose(interval, pinned, priority=priority, graphs=graphs)
        except Exception as exc:
            diagnosis[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    if not args.who_waits_only:
        name = "real loader, 4 workers, pinned, switch interval 0.5 ms"
        try:
            diagnosis[name] = diagnose(0.0005, True, DataLoader(dataset, batch_size=VIDEOS_PER_BATCH, num_workers=4,
                                                                collate_fn=collate_jpegs, pin_memory=True))
        except Exception as exc:
            diagnosis[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"

    result = {
        "benchmark": "gpu_decode_overlap",
        "device_name": device_name(device),
        "versions": versions("stadapt", "torch", "torchvision", "cuda"),
        "date": now(),
        "videos_per_batch": VIDEOS_PER_BATCH,
        "clips_per_batch": VIDEOS_PER_BATCH * views,
        "decode_host_ms_after_0.2s_queued_on": waits,
        "model_alone_clips_s": model_alone,
        "decode_alone_clips_s": decode_alone,
        "decoded_batches_and_model_clips_s": arrangements,
        "vs_model_alone": {k: round(v / model_alone, 3) for k, v in arrangements.items() if isinstance(v, float)},
        "device_ms_per_batch": profiles,
        "eval_views_candidates": candidates,
        "with_the_real_loader_4_workers_clips_s": with_loader,
        "with_the_real_loader_vs_model_alone": with_loader and round(with_loader / model_alone, 3),
        "model_alone_without_cuda_graphs_clips_s": rate(lambda: model_step(clips, False).cpu().shape[0] * views),
        "who_waits": diagnosis,
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
