"""How eval's GPU decoding shares the device with the model: the model on all SMs as CUDA
graphs, or compiled without graphs (graph replays ignore the partition) on a partition of the
SMs (a CUDA green context) that leaves a few free for the decoder. (At dbacba4
this script also measured the views computed on the consumer's stream and nvImageCodec's
engines on a stream of the highest priority: neither gained.)

On one CUDA device, the K400 recipe over a prepared store, eval's consumer loop (the model
compiled with CUDA graphs, softmax of the views, results to the host every batch):
- `model_alone_clips_s`: that loop on clips decoded once, on all SMs and on green contexts,
  with CUDA graphs (as eval runs) and compiled without them (kernels launched one by one);
- `loops`: the loop fed by decoded_batches, from in-memory batches and from the real loader
  (4 workers), in each arrangement: clips/s, against the model alone, the main
  thread's mean wait for a batch, the decode thread's mean time per batch and, of it, the
  mean time of the decoder's call;
- `clip_views_device_ms`: the device time of clip_views for one batch, by kernel;
- `decoder_call_alone_ms`: one torchvision decode call of a batch, nothing else running;
- `nvjpeg_call_kernels`: the kernels one torchvision decode call of a batch launches, by name:
  how many, and their device time.

    python -m benchmarks.gpu_decode_views DATA_ROOT SPLIT --out FILE.json
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from benchmarks.eval_batches import (
    STEPS,
    VIDEOS_PER_BATCH,
    arguments,
    clips_per_s,
    cuda_batches,
    eval_model,
    kernel_counts,
    kernel_ms,
)
from stadapt.bench.results import device_name, now, versions, write_result
from stadapt.data.gpu_decode import (
    JpegFiles,
    batch_jpegs,
    clip_views,
    collate_jpegs,
    decode_frames,
    decoded_batches,
    nvjpeg_decoder,
)
from stadapt.model.runtime import autocast, maybe_compile

WORKERS = 4
GREEN_SMS = (128, 120)  # of the H200's 132; green contexts partition SMs in groups of 8


def green_stream(num_sms: int, device: torch.device) -> torch.cuda.Stream:
    """A stream whose kernels run on `num_sms` SMs only (torch.cuda.green_contexts, beta). The
    green context must outlive every tensor allocated on the stream: freeing one after it fails
    with 'context is destroyed'."""
    from torch.cuda.green_contexts import GreenContext

    context = GreenContext.create(num_sms=num_sms, device_id=device.index or 0)
    if hasattr(context, "Stream"):
        stream = context.Stream()
    else:  # releases before 2.12: set_context makes the green context's own stream current
        context.set_context()
        stream = torch.cuda.current_stream(device)
        context.pop_context()
    stream.green_context = context  # kept alive with the stream
    return stream


def main() -> None:
    parser = arguments(__doc__)
    args = parser.parse_args()
    device, recipe, dataset, batches, views = cuda_batches(args)
    model, forward = eval_model(recipe, device)
    frames = decode_frames(batch_jpegs(batches[0]), batches[0]["ok"], device)
    clips = clip_views(frames, recipe.data)

    plain = maybe_compile(model, True, device)  # compiled without CUDA graphs: launched kernel by kernel

    def model_step(x: torch.Tensor, graphs: bool = True) -> int:
        with torch.no_grad(), autocast(device, recipe.train.precision):
            out = (forward if graphs else plain)(x.flatten(0, 1))
        F.softmax(out["label"].float(), dim=-1).view(x.shape[0], views, -1).mean(dim=1).cpu()
        return x.shape[0] * x.shape[1]

    def on_stream(stream: Optional[torch.cuda.Stream], fn: Any) -> Any:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            return fn()

    model_alone = clips_per_s(lambda: model_step(clips), device)
    greens: dict[int, Any] = {}
    alone: dict[str, Any] = {"all SMs": model_alone,
                             "all SMs, without CUDA graphs": clips_per_s(lambda: model_step(clips, False), device)}
    for sms in GREEN_SMS:
        for graphs in (True, False):
            name = f"green context of {sms} SMs" + ("" if graphs else ", without CUDA graphs")
            try:
                greens[sms] = greens.get(sms) or green_stream(sms, device)
                alone[name] = on_stream(greens[sms], lambda g=graphs: clips_per_s(lambda: model_step(clips, g), device))
            except Exception as exc:
                alone[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        print(alone, flush=True)
    nvjpeg = nvjpeg_decoder(device)
    decoder_s: list[float] = []

    def timed(decode: Any) -> Any:
        def call(files: JpegFiles) -> Any:
            start = time.perf_counter()
            decoded = decode(files)
            decoder_s.append(time.perf_counter() - start)
            return decoded
        return call

    def loop(loader: Optional[Iterable[dict[str, Any]]] = None,
             model_stream: Optional[torch.cuda.Stream] = None, graphs: bool = True) -> dict[str, float]:
        decoder_s.clear()
        pulls: list[float] = []
        waits: list[float] = []

        def timed_batches() -> Any:
            for batch in loader if loader is not None else itertools.islice(itertools.cycle(batches), STEPS + 8):
                pulls.append(time.perf_counter())
                yield batch

        source = decoded_batches(timed_batches(), recipe.data, device, decoder=timed(nvjpeg))

        def step() -> int:
            start = time.perf_counter()
            _, x, _ = next(source)  # on model_stream: it waits for the decode there, the views run there
            waits.append(time.perf_counter() - start)
            return model_step(x, graphs)

        rate = on_stream(model_stream, lambda: clips_per_s(step, device))
        source.close()
        gaps = [b - a for a, b in zip(pulls[4:], pulls[5:])]
        return {"clips_s": rate, "vs_model_alone": round(rate / model_alone, 3),
                "main_waits_for_a_batch_ms": round(1000 * sum(waits[3:]) / len(waits[3:]), 2),
                "decode_thread_ms_per_batch": round(1000 * sum(gaps) / max(1, len(gaps)), 2),
                "decoder_call_ms": round(1000 * sum(decoder_s[3:]) / max(1, len(decoder_s[3:])), 2)}

    def decoder_call_alone_ms(calls: int = 5) -> float:
        files = [f for video in batch_jpegs(batches[0]) for f in video]
        nvjpeg(files)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            nvjpeg(files)
        torch.cuda.synchronize()
        return round(1000 * (time.perf_counter() - start) / calls, 2)

    def real_loader() -> DataLoader:
        return DataLoader(dataset, batch_size=VIDEOS_PER_BATCH, num_workers=WORKERS, collate_fn=collate_jpegs)

    arrangements: list[tuple[str, Any]] = [
        ("CUDA graphs, all SMs", lambda: loop()),
        (f"CUDA graphs, all SMs, real loader ({WORKERS} workers)", lambda: loop(real_loader())),
    ]
    for sms, green in greens.items():
        arrangements += [
            (f"without CUDA graphs, on a green context of {sms} SMs",
             lambda g=green: loop(model_stream=g, graphs=False)),
            (f"without CUDA graphs, on a green context of {sms} SMs, real loader ({WORKERS} workers)",
             lambda g=green: loop(real_loader(), model_stream=g, graphs=False))]
    loops: dict[str, Any] = {}
    for name, run in arrangements:
        try:
            loops[name] = run()
        except Exception as exc:  # one arrangement failing should not lose the others' figures
            loops[name] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        print(name, loops[name], flush=True)

    result = {
        "benchmark": "gpu_decode_views",
        "device_name": device_name(device),
        "versions": versions("stadapt", "torch", "torchvision", "cuda"),
        "date": now(),
        "videos_per_batch": VIDEOS_PER_BATCH,
        "clips_per_batch": VIDEOS_PER_BATCH * views,
        "model_alone_clips_s": alone,
        "loops": loops,
        "clip_views_device_ms": kernel_ms(lambda: clip_views(frames, recipe.data)),
        "decoder_call_alone_ms": decoder_call_alone_ms(),
        "nvjpeg_call_kernels": kernel_counts(lambda: nvjpeg([f for video in batch_jpegs(batches[0]) for f in video])),
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
