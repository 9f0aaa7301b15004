"""The pre-decoded frame store written by `stadapt prepare --decode`, and its reader.

Decoding compressed video is what makes a loader slow: with long keyframe intervals, reading
8 frames still decodes most of the file. The store decodes every video once, scales it to a
short side of `short_side` pixels and keeps every frame as its own JPEG, so a clip costs
8 small JPEG decodes of exactly the frames it samples.

Layout: `<prepared>/store/info.json` plus one entry file per video at
`store/<h[:2]>/<h>.frames`, where h is the SHA-1 of the video's absolute path. An entry is

    JPEG 0 | JPEG 1 | ... | offsets: (n+1) little-endian u64 | header JSON | u64 header length | MAGIC

The index sits at the end so a writer can stream frames of an hour-long video without
holding them; the header records the source's size and mtime so an unchanged video is not
decoded again. Entries are written to a temporary name and renamed, so an interrupted run
never leaves a half-written entry where the reader looks.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import av
import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from stadapt.data.decode import VideoReadError, upright
from stadapt.data.manifest import Sample
from stadapt.errors import DataError, first_line
from stadapt.fileio import atomic_path, atomic_write_text

MAGIC = b"STFRAME1"
FORMAT = 1
JPEG_QUALITY = 90
TAIL = struct.Struct("<Q8s")  # header length, magic


def entry_path(prepared_root: Path, video: Path) -> Path:
    digest = hashlib.sha1(os.path.abspath(video).encode("utf-8")).hexdigest()
    return Path(prepared_root) / "store" / digest[:2] / f"{digest}.frames"


def write_store(prepared_root: Path, samples: list[Sample], short_side: int = 256, workers: int = 1,
                on_video: Callable[[Path], None] | None = None) -> dict:
    """Decode every distinct video of `samples` into the store; skip those already stored and
    unchanged (same size and mtime, same short side). Unreadable videos are listed, not fatal.

    Returns {videos, frames, bytes, seconds, written, unchanged, failed: [{path, error}]},
    where videos, frames and bytes describe the store entries of these samples.
    """
    start = time.perf_counter()
    if short_side < 16:
        raise DataError(f"store short side = {short_side}: must be at least 16 pixels")
    root = Path(prepared_root)
    videos = list(dict.fromkeys(Path(os.path.abspath(s.path)) for s in samples))
    summary: dict[str, Any] = {"videos": 0, "frames": 0, "bytes": 0, "seconds": 0.0, "written": 0,
                               "unchanged": 0, "failed": [], "short_side": short_side}
    todo = []
    for video in videos:
        header = _stored_header(entry_path(root, video))
        if header is not None and _is_current(header, video, short_side):
            _count(summary, header["num_frames"], entry_path(root, video).stat().st_size)
            summary["unchanged"] += 1
            if on_video is not None:
                on_video(video)
        else:
            todo.append(video)

    def finished(video: Path, result: tuple[int, int] | str) -> None:
        if isinstance(result, str):
            summary["failed"].append({"path": str(video), "error": result})
        else:
            _count(summary, *result)
            summary["written"] += 1
        if on_video is not None:
            on_video(video)

    if workers <= 1 or len(todo) <= 1:
        for video in todo:
            finished(video, _store_video(video, entry_path(root, video), short_side))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_store_video, v, entry_path(root, v), short_side): v for v in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    summary["seconds"] = round(time.perf_counter() - start, 3)
    info = {"format": FORMAT, "short_side": short_side, "jpeg_quality": JPEG_QUALITY,
            **{k: summary[k] for k in ("videos", "frames", "bytes")}}
    atomic_write_text(root / "store" / "info.json", json.dumps(info, indent=2) + "\n")
    return summary


def _count(summary: dict, frames: int, size: int) -> None:
    summary["videos"] += 1
    summary["frames"] += frames
    summary["bytes"] += size


def _is_current(header: dict, video: Path, short_side: int) -> bool:
    try:
        st = video.stat()
    except OSError:
        return False
    stored = (header.get("size"), header.get("mtime_ns"), header.get("short_side"))
    return stored == (st.st_size, st.st_mtime_ns, short_side)


def _store_video(video: Path, entry: Path, short_side: int) -> tuple[int, int] | str:
    """Write one entry; (frames, bytes) on success, else the reason as one line."""
    try:
        st = video.stat()
    except OSError as exc:
        return f"{video}: cannot open ({exc.strerror})"
    offsets = [0]
    try:
        with av.open(str(video)) as container, atomic_path(entry) as tmp:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            size = None
            with open(tmp, "wb") as fh:
                for frame in container.decode(stream):
                    if size is None:
                        size = _scaled_size(frame.width, frame.height, short_side)
                    rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
                    image = upright(rgb.to_ndarray(), frame.rotation)  # as the decoder gives it
                    jpeg = encode_jpeg(torch.from_numpy(image).permute(2, 0, 1), quality=JPEG_QUALITY)
                    fh.write(jpeg.numpy().tobytes())
                    offsets.append(offsets[-1] + jpeg.numel())
                if size is None:
                    raise ValueError("no video frames")
                rate = stream.average_rate or stream.guessed_rate
                header = {"format": FORMAT, "source": str(video), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                          "num_frames": len(offsets) - 1, "fps": float(rate) if rate else None,
                          "width": image.shape[1], "height": image.shape[0], "short_side": short_side}
                blob = json.dumps(header).encode("utf-8")
                fh.write(np.asarray(offsets, dtype="<u8").tobytes())
                fh.write(blob)
                fh.write(TAIL.pack(len(blob), MAGIC))
    except Exception as exc:  # PyAV/FFmpeg errors, a full disk: report the video, go on
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{video}: cannot store ({reason.replace(str(video), '').strip(' :')})"
    return len(offsets) - 1, entry.stat().st_size


def _scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale so the short side is `short_side`; never enlarge."""
    scale = min(short_side / min(width, height), 1.0)
    return max(round(width * scale), 1), max(round(height * scale), 1)


def _stored_header(entry: Path) -> Optional[dict]:
    try:
        with open(entry, "rb") as fh:
            return _read_footer(fh, entry)[0]
    except (OSError, VideoReadError):
        return None


def _read_footer(fh, entry: Path) -> tuple[dict, int]:
    """(header, position of the offset table) of an open entry file."""
    try:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(end - TAIL.size)
        header_len, magic = TAIL.unpack(fh.read(TAIL.size))
        if magic != MAGIC:
            raise ValueError("bad magic")
        fh.seek(end - TAIL.size - header_len)
        header = json.loads(fh.read(header_len))
        table = end - TAIL.size - header_len - 8 * (header["num_frames"] + 1)
        if table < 0:
            raise ValueError("truncated")
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise VideoReadError(f"{entry}: damaged frame store entry ({exc}); "
                             "run `stadapt prepare --decode` again") from None
    return header, table


class FrameStore:
    """Reads clips out of a prepared directory's store."""

    def __init__(self, prepared_root: Path):
        self.root = Path(prepared_root)
        info = self.root / "store" / "info.json"
        if not info.is_file():
            raise DataError(f"{info}: missing, so data.source = prepared has nothing to read "
                            "(run `stadapt prepare DATASET ROOT --decode`, or set data.source=raw)")

    def open(self, video: Path) -> "StoreEntry":
        entry = entry_path(self.root, video)
        try:
            fh = open(entry, "rb")
        except FileNotFoundError:
            raise VideoReadError(f"{video}: not in the frame store {self.root / 'store'} "
                                 "(unreadable when prepared, or added since; "
                                 "run `stadapt prepare --decode` again)") from None
        return StoreEntry(fh, entry)


class StoreEntry:
    """One stored video: its frame count, and a reader of chosen frames."""

    def __init__(self, fh, path: Path):
        self.fh, self.path = fh, path
        try:
            self.header, self._table = _read_footer(fh, path)
        except VideoReadError:
            fh.close()
            raise
        self.num_frames: int = self.header["num_frames"]

    def read(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """Frames `indices` as 3×H×W uint8 tensors (a repeated index repeats the same tensor);
        indices past the end give the last frame. A list, not a stacked tensor: the transforms
        copy each frame's crop out anyway, and skipping the stack saves a full-frame copy."""
        wanted = np.minimum(np.asarray(indices, dtype=np.int64).reshape(-1), self.num_frames - 1)
        unique, inverse = np.unique(wanted, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1])
        self.fh.seek(self._table + 8 * lo)
        offsets = np.frombuffer(self.fh.read(8 * (hi - lo + 2)), dtype="<u8")
        jpegs = []
        for i in unique - lo:
            start, stop = int(offsets[i]), int(offsets[i + 1])
            buf = bytearray(stop - start)
            self.fh.seek(start)
            if self.fh.readinto(buf) != len(buf):
                raise VideoReadError(f"{self.path}: truncated frame store entry; run `stadapt prepare --decode` again")
            jpegs.append(torch.frombuffer(buf, dtype=torch.uint8))
        try:
            frames = decode_jpeg(jpegs)
        except RuntimeError as exc:
            raise VideoReadError(f"{self.path}: damaged JPEG in the frame store ({first_line(exc)})") from None
        return [frames[i] for i in inverse]

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "StoreEntry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
