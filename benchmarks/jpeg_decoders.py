"""Eval's GPU decoding with each batched JPEG decoder, in one run on one CUDA device.

For each batched decoder (`--decoders`: torchvision's nvJPEG, as `stadapt eval` decodes;
nvImageCodec on the GPU's hardware JPEG engines, with fresh or reused buffers; each batch
shared between the engines and nvJPEG at once, a third or a half on the engines), with the
batches of a prepared store read into memory first:

- `host_ms_per_call`: the decoder's call alone on one batch's files, the host's time until
  the device has finished;
- `decode_alone_clips_s`: `decode_clips` (decode, resize, crops) alone;
- `with_model_clips_s`: eval's consumer loop, the graph-captured model with softmax of the 3
  views and the results to the host, fed by `decoded_batches` from the in-memory batches;
- `with_the_real_loader_clips_s`: the same loop fed by eval's loader (4 workers), as `stadapt
  eval` runs it;
- `call_kernels`: the kernels and copies of one call on a batch's files;

each against the model alone in the same run (`*_vs_model_alone`), and how far each decoder's
views are from torchvision's (levels). A decoder that cannot run on this machine is recorded
with its error. (At commit 6c0a581 it also measured the real loader's loop with a share of the
videos decoded in the workers on the CPU: `--cpu-shares`; at dd8b8a0 and be54bc7, libnvjpeg's
hardware backend called directly through ctypes: files from host memory or one device buffer,
RGB or YUV output, one call or a batch split between 2, 4 or 8 calls at once.)

    python -m benchmarks.jpeg_decoders DATA_ROOT SPLIT --out FILE.json [--decoders NAME,…]
"""

from __future__ import annotations

import concurrent.futures
import faulthandler
import functools
import itertools
import json
import signal
import time
from typing import Any, Callable

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
)
from stadapt.bench.results import device_name, now, versions, write_result
from stadapt.data.gpu_decode import (
    batch_jpegs,
    collate_jpegs,
    decode_clips,
    decoded_batches,
    nvjpeg_decoder,
)
from stadapt.model.runtime import autocast

WORKERS = 4



class NvImageCodecJpegs:
    """nvImageCodec's batched decoder on the GPU's hardware JPEG engines (HW_GPU_ONLY), planar RGB
    as torchvision's, on the caller's current stream; None for a file it cannot decode. With
    `reuse`, a call decodes into the previous call's buffers when it has as many files (the
    frames it returned before are overwritten in stream order)."""

    def __init__(self, device: torch.device, reuse: bool = False):
        from nvidia import nvimgcodec

        self.device, self._codec, self._reuse = device, nvimgcodec, reuse
        index = device.index if device.index is not None else torch.cuda.current_device()
        self._decoder = nvimgcodec.Decoder(device_id=index,
                                           backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               sample_format=nvimgcodec.SampleFormat.P_RGB)
        self._images: list[Any] = []

    def __call__(self, files: Any) -> list[Any]:
        streams = [self._codec.CodeStream(f.numpy()) for f in files]
        reused = self._images if self._reuse and len(self._images) == len(files) else None
        images = self._decoder.decode(streams, images=reused, params=self._params,
                                      cuda_stream=torch.cuda.current_stream(self.device).cuda_stream)
        if self._reuse and all(image is not None for image in images):
            self._images = images
        return [None if image is None else torch.from_dlpack(image) for image in images]


class SplitJpegs:
    """Each call's first `share` of the files on the hardware engines (nvImageCodec, in a helper
    thread, on the caller's stream) while torchvision decodes the rest: the engines and the SMs
    at once."""

    def __init__(self, device: torch.device, share: float):
        self.device, self.share = device, share
        self.engines, self.nvjpeg = NvImageCodecJpegs(device), nvjpeg_decoder(device)
        self.helper = concurrent.futures.ThreadPoolExecutor(1)

    def __call__(self, files: Any) -> list[Any]:
        cut = round(len(files) * self.share)
        stream = torch.cuda.current_stream(self.device)

        def on_engines() -> list[Any]:
            with torch.cuda.stream(stream):
                return self.engines(files[:cut])

        first = self.helper.submit(on_engines)
        rest = self.nvjpeg(files[cut:])
        return first.result() + list(rest)


DECODERS: dict[str, tuple[str, Callable[[torch.device], Any]]] = {
    "nvjpeg": ("torchvision", nvjpeg_decoder),
    "engines": ("nvimgcodec hardware engines", NvImageCodecJpegs),
    "engines-reuse": ("nvimgcodec hardware engines, reusing buffers",
                      lambda device: NvImageCodecJpegs(device, reuse=True)),
    "third": ("a third on the engines, the rest torchvision, at once", lambda device: SplitJpegs(device, 1 / 3)),
    "half": ("half on the engines, half torchvision, at once", lambda device: SplitJpegs(device, 0.5)),
}
PHASE_S = 45  # a phase still running after this dumps every thread's stack and the decoder is given up


def nvimgcodec_version() -> str | None:
    try:
        from nvidia import nvimgcodec
    except ImportError:
        return None
    return nvimgcodec.__version__


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--decoders", default=",".join(DECODERS),
                        help=f"which of them, comma-separated ({', '.join(DECODERS)})")
    args = parser.parse_args()
    device, recipe, dataset, batches, views = cuda_batches(args)

    model, forward = eval_model(recipe, device)

    def model_step(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(device, recipe.train.precision):
            out = forward(x.flatten(0, 1))
        return F.softmax(out["label"].float(), dim=-1).view(x.shape[0], views, -1).mean(dim=1).cpu()

    def rate(step: Callable[[], int]) -> float:
        return clips_per_s(step, device)

    def loop(source: Any, decoder: Any) -> float:
        """clips/s of eval's consumer loop over decoded_batches of `source`."""
        decoded = decoded_batches(source, recipe.data, device, decoder=decoder)

        def step() -> int:
            _, x, _ = next(decoded)
            model_step(x)
            return x.shape[0] * x.shape[1]

        try:
            return rate(step)
        finally:
            decoded.close()  # its thread ends before the next phase uses the decoder

    def decode_rate(decoder: Any) -> float:
        """clips/s of decode_clips alone over the in-memory batches."""
        cycle = itertools.cycle(batches)

        def step() -> int:
            batch = next(cycle)
            return decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, device, decoder)[0].shape[0] * views

        return rate(step)

    def host_ms(decoder: Any) -> float:
        decoder(first_files)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(5):
            decoder(first_files)
        torch.cuda.synchronize(device)
        return round(1000 * (time.perf_counter() - start) / 5, 2)

    def phase(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args), timed out after PHASE_S (every thread's stack goes to the log first)."""
        print(f"  {time.strftime('%T')} {name}", flush=True)
        faulthandler.dump_traceback_later(PHASE_S - 5)
        signal.alarm(PHASE_S)
        try:
            value = fn(*args)
            print(f"    {value if isinstance(value, float) else ''}", flush=True)
            return value
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()

    def timeout(*_: Any) -> None:
        raise TimeoutError(f"a phase ran over {PHASE_S} s")

    signal.signal(signal.SIGALRM, timeout)
    first = batch_jpegs(batches[0])
    first_files = [f for video in first for f in video]
    reference = decode_clips(first, batches[0]["ok"], recipe.data, device, nvjpeg_decoder(device))[0]
    model_alone = rate(lambda: model_step(reference).shape[0] * views)
    results: dict[str, Any] = {}
    for key in args.decoders.split(","):
        name, make = DECODERS[key]
        try:
            print(name, flush=True)
            decoder = make(device)
            clips, ok = phase("first batch", decode_clips, first, batches[0]["ok"], recipe.data, device, decoder)
            if not ok.all():
                raise RuntimeError(f"{int((~ok).sum())} of {len(ok)} videos did not decode")
            difference = (clips.int() - reference.int()).abs().float()
            call_ms = phase("host ms per call", host_ms, decoder)
            alone = phase("decode alone", decode_rate, decoder)
            in_memory = phase("with the model", loop, itertools.islice(itertools.cycle(batches), STEPS + 8), decoder)
            real = phase("with the real loader", loop, DataLoader(dataset, batch_size=VIDEOS_PER_BATCH,
                                                                  num_workers=WORKERS, collate_fn=collate_jpegs),
                         decoder)
            call_kernels = phase("kernels of a call", kernel_counts, functools.partial(decoder, first_files))
            results[name] = {
                "host_ms_per_call": call_ms,
                "levels_vs_torchvision_mean": round(difference.mean().item(), 4),
                "levels_vs_torchvision_max": difference.max().item(),
                "decode_alone_clips_s": alone,
                "with_model_clips_s": in_memory,
                "with_model_vs_model_alone": round(in_memory / model_alone, 3),
                "with_the_real_loader_clips_s": real,
                "with_the_real_loader_vs_model_alone": round(real / model_alone, 3),
                "call_kernels": call_kernels,
            }
        except Exception as exc:  # one decoder failing or hanging should not lose the others' figures
            results[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        print(name, results[name], flush=True)

    result = {
        "benchmark": "jpeg_decoders",
        "device_name": device_name(device),
        "versions": {**versions("stadapt", "torch", "torchvision", "cuda"), "nvimgcodec": nvimgcodec_version()},
        "date": now(),
        "videos_per_batch": VIDEOS_PER_BATCH,
        "clips_per_batch": VIDEOS_PER_BATCH * views,
        "loader_workers": WORKERS,
        "model_alone_clips_s": model_alone,
        "decoders": results,
    }
    write_result(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
