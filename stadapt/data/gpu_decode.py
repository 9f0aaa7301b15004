"""Test clips decoded on the GPU: loader workers only read the store's JPEG bytes; the main
process decodes a whole batch at once with nvJPEG (torchvision.io.decode_jpeg on a list, on
the device), then resizes and crops there.

On one CPU core the store's 340×256 JPEGs decode at about 1,000 frames/s, while inference at
batch 32 on an H200 consumes about 11,500; batched nvJPEG decodes about 25,000 (docs/
performance.md). The views are those of EvalTransform: the short side scaled to
data.test_resize (bilinear, antialiased, rounded back to uint8), then the spatial crops; they
equal the CPU path's up to the rounding of the two JPEG decoders and resamplers. A thread
decodes the next batches on a side stream while the model computes the current one
(`decoded_batches`): decoding in turn with the model would add its whole time to each step.
The overlap is partial: while the model runs, torchvision's nvJPEG call of a batch (its own
pool stream, synchronised at each call, one call at a time; on an H200 the hardware engines,
then one conversion kernel and one copy per frame) takes about four times as long as alone,
75-88 ms instead of 19-23. Every other decoder, placement and priority measured on the H200
did no better (README "Performance"; benchmarks/jpeg_decoders.py, gpu_decode_views.py,
gpu_decode_overlap.py), so torchvision's nvJPEG decodes every frame; `decoder` takes another
batched decoder for such measurements.

A batch crosses from the loader workers as one byte buffer and the frames' sizes
(`collate_jpegs`), not as one tensor per frame: each tensor a worker sends travels through
its own shared-memory file, which for a batch of 32 videos × 24 frames cost more than the
decoding itself.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate
from torchvision.io import decode_jpeg

from stadapt.data.dataset import VideoDataset, _warn_once
from stadapt.data.decode import VideoReadError
from stadapt.data.transforms import spatial_crops
from stadapt.errors import DataError
from stadapt.recipe import DataConfig

DECODES = ("auto", "cpu", "gpu")


def resolve_decode(decode: str, dataset: Dataset, device: torch.device) -> str:
    """cpu or gpu: `auto` is gpu when the device is CUDA and the data comes from a prepared JPEG store."""
    if decode not in DECODES:
        raise DataError(f"--decode {decode!r}: expected one of {', '.join(DECODES)}")
    store = getattr(dataset, "store", None)
    jpegs = store is not None and store.codec == "jpeg"
    if decode == "gpu" and (device.type != "cuda" or not jpegs):
        kept = "raw" if store is None else f"prepared, frames stored as {store.codec}"
        raise DataError("--decode gpu: needs a CUDA device and data.source = prepared with a JPEG store "
                        f"(here: {device.type}, data.source = {kept})")
    if decode == "auto":
        return "gpu" if device.type == "cuda" and jpegs else "cpu"
    return decode


class StoredJpegClips(Dataset):
    """The test items of a VideoDataset over a store, with the JPEGs of their frames instead of
    decoded clips: {"jpegs": the frames' files one after the other (1-d uint8, views' frames in
    order), "jpeg_sizes": each file's length, "label", "index", "ok"}."""

    def __init__(self, dataset: VideoDataset):
        if dataset.store is None or dataset.train:
            raise ValueError("StoredJpegClips reads the test items of a dataset with a frame store")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ds = self.dataset
        sample = ds.samples[index]
        try:
            with ds.store.open(sample.path) as entry:
                jpegs, ok = entry.read_jpegs(ds.test_frames(sample)(entry.num_frames)), True
        except VideoReadError as exc:
            _warn_once(sample.path, exc)
            jpegs, ok = [], False
        item = ds._item(index, torch.empty(0), ok, 0)
        del item["clip"]
        return {**pack_jpegs(jpegs), **item}


def pack_jpegs(jpegs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"jpegs": the files concatenated, "jpeg_sizes": their lengths} of one video's frames."""
    sizes = torch.tensor([len(j) for j in jpegs], dtype=torch.int64)
    return {"jpegs": torch.cat(list(jpegs)) if jpegs else torch.empty(0, dtype=torch.uint8), "jpeg_sizes": sizes}


PACKED = ("jpegs", "jpeg_sizes")


def collate_jpegs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: every video's bytes in one buffer, all frames' sizes, each video's frame count
    (`jpeg_counts`), everything else collated as usual."""
    rest = default_collate([{k: v for k, v in item.items() if k not in PACKED} for item in items])
    return {"jpegs": torch.cat([item["jpegs"] for item in items]),
            "jpeg_sizes": torch.cat([item["jpeg_sizes"] for item in items]),
            "jpeg_counts": torch.tensor([len(item["jpeg_sizes"]) for item in items], dtype=torch.int64), **rest}


def batch_jpegs(batch: dict[str, Any]) -> list[list[torch.Tensor]]:
    """The JPEG files of each video of a collate_jpegs batch (views of its one buffer)."""
    frames = torch.split(batch["jpegs"], batch["jpeg_sizes"].tolist())
    bounds = [0, *torch.cumsum(batch["jpeg_counts"], 0).tolist()]
    return [list(frames[a:b]) for a, b in zip(bounds, bounds[1:])]


JpegFiles = Sequence[torch.Tensor]  # encoded files, 1-d uint8 on the host
DecodedFiles = list[Optional[torch.Tensor]]  # 3×H×W uint8 on the device, None where a file did not decode
JpegDecoder = Callable[[JpegFiles], DecodedFiles]  # raises RuntimeError where a whole call fails


def nvjpeg_decoder(device: torch.device) -> JpegDecoder:
    """torchvision.io.decode_jpeg on a list: nvJPEG on CUDA, libjpeg-turbo on the CPU. A damaged
    file fails the whole call."""
    return functools.partial(decode_jpeg, device=device)


class DecodedFrames(NamedTuple):
    """A batch's frames as decoded on the device, before their views: per frame size, the
    videos' positions in the batch and their frames stacked (n×T'×3×H×W uint8, each video's
    temporal views one after the other); `ok` says which of the `count` videos decoded."""

    groups: list[tuple[list[int], torch.Tensor]]
    ok: torch.Tensor
    count: int
    device: torch.device


def decode_frames(jpegs: Sequence[JpegFiles], ok: torch.Tensor, device: torch.device,
                  decoder: Optional[JpegDecoder] = None) -> DecodedFrames:
    """One batched decode of every frame (by `decoder`, default nvjpeg_decoder(device)). A video
    whose JPEGs fail to decode becomes not ok, as the CPU path reports an unreadable video."""
    ok = ok.clone().bool()
    frames = _decode_all(jpegs, ok, decoder or nvjpeg_decoder(device))
    by_shape: dict[tuple[int, ...], list[int]] = {}  # one stack (and later one resize) per frame size
    for i, video in enumerate(frames):
        if video is not None:
            by_shape.setdefault(tuple(video[0].shape), []).append(i)
    groups = [(group, torch.stack([f for i in group for f in frames[i]]).view(len(group), -1, *shape))
              for shape, group in by_shape.items()]
    return DecodedFrames(groups, ok, len(jpegs), device)


def clip_views(frames: DecodedFrames, data: DataConfig) -> torch.Tensor:
    """uint8 N×V×3×T×S×S clips of the decoded frames (eval_views), zeros for videos not ok.
    Issues no host-device synchronisation: placing the groups uses an index copied without one."""
    d = data
    views = d.test_views.temporal * d.test_views.spatial
    if len(frames.groups) == 1 and len(frames.groups[0][0]) == frames.count:
        return eval_views(frames.groups[0][1], d)  # every video decoded, one frame size
    out = torch.zeros((frames.count, views, 3, d.num_frames, d.crop, d.crop), dtype=torch.uint8, device=frames.device)
    for positions, stacked in frames.groups:
        out.index_copy_(0, torch.tensor(positions).to(frames.device, non_blocking=True), eval_views(stacked, d))
    return out


def decode_clips(jpegs: Sequence[JpegFiles], ok: torch.Tensor, data: DataConfig, device: torch.device,
                 decoder: Optional[JpegDecoder] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N×V×3×T×S×S clips on `device`, ok): decode_frames, then clip_views."""
    frames = decode_frames(jpegs, ok, device, decoder)
    return clip_views(frames, data), frames.ok


def _decode_all(jpegs: Sequence[JpegFiles], ok: torch.Tensor, decoder: JpegDecoder) -> list[Optional[DecodedFiles]]:
    """Decoded frames per video (None where not ok, ok updated); one call for the batch, one per
    video where that call fails."""
    wanted = [i for i, video in enumerate(jpegs) if ok[i] and len(video)]
    try:
        flat = decoder([j for i in wanted for j in jpegs[i]]) if wanted else []
        bounds = [0, *itertools.accumulate(len(jpegs[i]) for i in wanted)]
        decoded: list[Optional[DecodedFiles]] = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
    except RuntimeError:  # a damaged JPEG fails torchvision's whole call: find the video it belongs to
        decoded = []
        for i in wanted:
            try:
                decoded.append(decoder(list(jpegs[i])))
            except RuntimeError:
                decoded.append(None)
    result: list[Optional[DecodedFiles]] = [None] * len(jpegs)
    for i, frames in zip(wanted, decoded):
        if frames is not None and all(f is not None for f in frames):
            result[i] = frames
    ok &= torch.tensor([r is not None for r in result], dtype=torch.bool)
    return result


def eval_views(frames: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """EvalTransform on the frames' own device, for N videos at once: N×T'×3×H×W uint8 (each
    video's temporal views one after the other) → N×V×3×T×crop×crop uint8, temporal-major as
    VideoDataset's test items. Batched because, run per video, these small kernels cost about
    a tenth of a millisecond a clip on an H200, a third of the decoding's time."""
    d = data
    n, total, channels, h, w = frames.shape
    short = min(h, w)
    size = (round(h * d.test_resize / short), round(w * d.test_resize / short))
    if size != (h, w):
        resized = F.interpolate(frames.flatten(0, 1).float(), size=size, mode="bilinear", antialias=True,
                                align_corners=False)
        frames = resized.round_().clamp_(0, 255).to(torch.uint8).view(n, total, channels, *size)
    clips = frames.view(n, d.test_views.temporal, d.num_frames, channels, *frames.shape[-2:])
    views = torch.stack(spatial_crops(clips, d.crop, d.test_views.spatial), dim=2)  # N×temporal×spatial×T×3×S×S
    return views.permute(0, 1, 2, 4, 3, 5, 6).reshape(n, -1, channels, d.num_frames, d.crop, d.crop)


def decoded_batches(loader: Iterable[dict[str, Any]], data: DataConfig, device: torch.device,
                    ahead: int = 2, priority: int = 0, decoder: Optional[JpegDecoder] = None,
                    ) -> Iterator[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """(batch, clips, ok) for each batch of collate_jpegs, decoded by decode_clips (with `decoder`)
    in a thread up to `ahead` batches in advance (on CUDA, on a side stream of `priority` that the
    caller's stream waits for). A high priority, or the views computed on the caller's stream
    instead, measured without gain (README "Performance")."""
    decoder = decoder or nvjpeg_decoder(device)
    done = object()
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()  # set when the consumer stops early: the thread ends instead of waiting on `ready`
    side = torch.cuda.Stream(device, priority=priority) if device.type == "cuda" else None

    def decode_ahead() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in loader:
                    if stop.is_set():
                        return
                    clips, ok = decode_clips(batch_jpegs(batch), batch["ok"], data, device, decoder)
                    event = side.record_event() if side is not None else None
                    ready.put((batch, clips, ok, event))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)
            return
        ready.put(done)

    thread = threading.Thread(target=decode_ahead, name="stadapt-gpu-decode", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            batch, clips, ok, event = item
            if event is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                clips.record_stream(current)  # allocated on the side stream, used on this one
            yield batch, clips, ok
    finally:
        stop.set()
        while thread.is_alive():  # take what it still puts, so that it sees `stop`
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
