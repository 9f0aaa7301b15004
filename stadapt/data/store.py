"""The pre-decoded frame store written by `stadapt prepare --decode`, and its reader.

Decoding compressed video is what makes a loader slow: with long keyframe intervals, reading
8 frames still decodes most of the file. The store decodes every video once, scales it to a
short side of `short_side` pixels and keeps every frame as its own JPEG, so a clip costs
8 small JPEG decodes of exactly the frames it samples. The JPEGs are baseline 4:2:0 at quality
85 with optimised Huffman tables (`benchmarks/store_options.py` measured the choices:
README, "Loading"); baseline JPEG is also what nvJPEG decodes on the GPU (stadapt.data.gpu_decode).

With `codec = "h264"` (format 3) each frame is instead one packet of a short-GOP H.264
stream (stadapt.data.h264_store): a quarter of the size on detailed footage, for three to four
times the loading cost per clip, and no GPU decoding.

Layout: `<prepared>/store/info.json` plus one entry file per video at
`store/<h[:2]>/<h>.frames`, where h is the SHA-1 of the video's absolute path. An entry is

    frame 0 | frame 1 | ... | offsets: (n+1) little-endian u64 | header JSON | u64 header length | MAGIC

where a frame is a JPEG file or an H.264 packet. The header records the format and the
encoding. Format 1 entries (quality 90, written before the header named the encoding) read
the same way; `prepare --decode` re-encodes them.
The index sits at the end so a writer can stream frames of an hour-long video without
holding them; the header records the source's size and mtime so an unchanged video is not
decoded again. Entries are written to a temporary name and renamed, so an interrupted run
never leaves a half-written entry where the reader looks.
"""

from __future__ import annotations

import hashlib
import io
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
from PIL import Image
from torchvision.io import decode_jpeg

from stadapt.data import h264_store
from stadapt.data.decode import VideoReadError, upright
from stadapt.data.manifest import Sample
from stadapt.errors import DataError, first_line
from stadapt.fileio import atomic_path, atomic_write_text

MAGIC = b"STFRAME1"
FORMAT = 2  # JPEG entries
H264_FORMAT = 3  # H.264 entries
READABLE_FORMATS = (1, 2, 3)
CODECS = ("jpeg", "h264")
JPEG_QUALITY = 85
CHROMA = "420"  # "420": chroma at half resolution both ways (what JPEG files usually hold); "444": full
SUBSAMPLING = {"444": 0, "420": 2}  # PIL's names for them
TAIL = struct.Struct("<Q8s")  # header length, magic


def entry_path(prepared_root: Path, video: Path) -> Path:
    digest = hashlib.sha1(os.path.abspath(video).encode("utf-8")).hexdigest()
    return Path(prepared_root) / "store" / digest[:2] / f"{digest}.frames"


def encode_frame(image: np.ndarray, quality: int = JPEG_QUALITY, chroma: str = CHROMA) -> bytes:
    """One H×W×3 uint8 RGB frame as a baseline JPEG."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=SUBSAMPLING[chroma], optimize=True)
    return buf.getvalue()


def store_encoding(short_side: int = 256, codec: str = "jpeg", quality: int = JPEG_QUALITY,
                   chroma: str = CHROMA, gop: int = h264_store.GOP) -> dict[str, Any]:
    """The encoding a store records (and an entry must match to count as current); `gop` is
    the H.264 store's keyframe interval."""
    if short_side < 16:
        raise DataError(f"store short side = {short_side}: must be at least 16 pixels")
    if codec not in CODECS:
        raise DataError(f"--store {codec!r}: expected one of {', '.join(CODECS)}")
    if codec == "h264":
        if gop < 1:
            raise DataError(f"store keyframe interval {gop}: must be at least 1")
        return {"short_side": short_side, "codec": "h264", "gop": gop, "crf": h264_store.CRF}
    if not 1 <= quality <= 95 or chroma not in SUBSAMPLING:
        raise DataError(f"store JPEG quality {quality}, chroma {chroma!r}: expected 1..95 and one of "
                        f"{', '.join(SUBSAMPLING)}")
    return {"short_side": short_side, "jpeg_quality": quality, "chroma": chroma}


def _format_of(encoding: dict[str, Any]) -> int:
    return H264_FORMAT if encoding.get("codec") == "h264" else FORMAT


def write_store(prepared_root: Path, samples: list[Sample], short_side: int = 256, workers: int = 1,
                on_video: Callable[[Path], None] | None = None, quality: int = JPEG_QUALITY,
                chroma: str = CHROMA, codec: str = "jpeg", gop: int = h264_store.GOP) -> dict:
    """Decode every distinct video of `samples` into the store; skip those already stored and
    unchanged (same size and mtime, same short side and encoding). Unreadable videos are listed,
    not fatal. `codec`: jpeg (a JPEG per frame) or h264 (stadapt.data.h264_store).

    Returns {videos, frames, bytes, seconds, written, unchanged, failed: [{path, error}]},
    where videos, frames and bytes describe the store entries of these samples.
    """
    start = time.perf_counter()
    encoding = store_encoding(short_side, codec, quality, chroma, gop)
    root = Path(prepared_root)
    videos = list(dict.fromkeys(Path(os.path.abspath(s.path)) for s in samples))
    summary: dict[str, Any] = {"videos": 0, "frames": 0, "bytes": 0, "seconds": 0.0, "written": 0,
                               "unchanged": 0, "failed": [], **encoding}
    todo = []
    for video in videos:
        header = _stored_header(entry_path(root, video))
        if header is not None and _is_current(header, video, encoding):
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
            finished(video, _store_video(video, entry_path(root, video), encoding))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_store_video, v, entry_path(root, v), encoding): v for v in todo}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    summary["seconds"] = round(time.perf_counter() - start, 3)
    info = {"format": _format_of(encoding), **encoding, **{k: summary[k] for k in ("videos", "frames", "bytes")}}
    atomic_write_text(root / "store" / "info.json", json.dumps(info, indent=2) + "\n")
    return summary


def _count(summary: dict, frames: int, size: int) -> None:
    summary["videos"] += 1
    summary["frames"] += frames
    summary["bytes"] += size


def _is_current(header: dict, video: Path, encoding: dict) -> bool:
    try:
        st = video.stat()
    except OSError:
        return False
    same_source = (header.get("size"), header.get("mtime_ns")) == (st.st_size, st.st_mtime_ns)
    return (header.get("format") == _format_of(encoding) and same_source
            and all(header.get(k) == v for k, v in encoding.items()))


def _store_video(video: Path, entry: Path, encoding: dict) -> tuple[int, int] | str:
    """Write one entry; (frames, bytes) on success, else the reason as one line."""
    try:
        st = video.stat()
    except OSError as exc:
        return f"{video}: cannot open ({exc.strerror})"
    offsets = [0]

    def write(fh, chunks: list[bytes]) -> None:
        for chunk in chunks:
            fh.write(chunk)
            offsets.append(offsets[-1] + len(chunk))

    try:
        with av.open(str(video)) as container, atomic_path(entry) as tmp:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            size, encoder, frames = None, None, 0
            with open(tmp, "wb") as fh:
                for frame in container.decode(stream):
                    if size is None:
                        size = _scaled_size(frame.width, frame.height, encoding["short_side"])
                    image = upright(scaled_rgb(frame, size), frame.rotation)  # as the decoder gives it
                    frames += 1
                    if encoding.get("codec") == "h264":
                        if encoder is None:
                            encoder = h264_store.H264Encoder(image.shape[1], image.shape[0], encoding["gop"],
                                                             encoding["crf"])
                        write(fh, encoder.encode(image))
                    else:
                        write(fh, [encode_frame(image, encoding["jpeg_quality"], encoding["chroma"])])
                if size is None:
                    raise ValueError("no video frames")
                if encoder is not None:
                    write(fh, encoder.flush())
                if len(offsets) - 1 != frames:
                    raise ValueError(f"{len(offsets) - 1} stored frames of {frames} decoded")
                rate = stream.average_rate or stream.guessed_rate
                header = {"format": _format_of(encoding), "source": str(video), "size": st.st_size,
                          "mtime_ns": st.st_mtime_ns, "num_frames": frames, "fps": float(rate) if rate else None,
                          "width": image.shape[1], "height": image.shape[0], **encoding}
                blob = json.dumps(header).encode("utf-8")
                fh.write(np.asarray(offsets, dtype="<u8").tobytes())
                fh.write(blob)
                fh.write(TAIL.pack(len(blob), MAGIC))
    except Exception as exc:  # PyAV/FFmpeg errors, a full disk: report the video, go on
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{video}: cannot store ({reason.replace(str(video), '').strip(' :')})"
    return len(offsets) - 1, entry.stat().st_size


def scaled_rgb(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """A decoded frame as H×W×3 RGB at `size` (width, height), scaled as the store scales it."""
    return frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()


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
        if header.get("format") not in READABLE_FORMATS:
            raise VideoReadError(f"{entry}: frame store format {header.get('format')!r}, this stadapt reads "
                                 f"{', '.join(map(str, READABLE_FORMATS))}; run `stadapt prepare --decode` again")
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
        try:
            self.info: dict = json.loads(info.read_text(encoding="utf-8"))
            found = self.info["format"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{info}: not a frame store description ({exc}); "
                            "run `stadapt prepare --decode` again") from None
        if found not in READABLE_FORMATS:
            raise DataError(f"{info}: frame store format {found!r}, this stadapt reads "
                            f"{', '.join(map(str, READABLE_FORMATS))}; run `stadapt prepare --decode` again")

    @property
    def codec(self) -> str:
        """jpeg or h264: how the frames are kept (only a JPEG store can be decoded on the GPU)."""
        return self.info.get("codec", "jpeg")

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
        if self.header.get("codec") == "h264":
            return self._read_h264(indices)
        unique, inverse = self._read_jpegs(indices)
        try:
            frames = decode_jpeg(unique)
        except RuntimeError as exc:
            raise VideoReadError(f"{self.path}: damaged JPEG in the frame store ({str(exc).splitlines()[0]})") from None
        return [frames[i] for i in inverse]

    def read_jpegs(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The JPEG files of frames `indices` as 1-d uint8 tensors, undecoded (as `read` picks them)."""
        if self.header.get("codec") == "h264":
            raise VideoReadError(f"{self.path}: an H.264 store entry holds no JPEGs (decode it on the CPU)")
        unique, inverse = self._read_jpegs(indices)
        return [unique[i] for i in inverse]

    def _wanted(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The distinct frames of `indices` (past the end: the last frame) in order, and for each
        index its position among them."""
        wanted = np.minimum(np.asarray(indices, dtype=np.int64).reshape(-1), self.num_frames - 1)
        return np.unique(wanted, return_inverse=True)

    def _offsets(self, lo: int, hi: int) -> np.ndarray:
        """Where the stored files (JPEGs or packets) of frames lo..hi start, and where the last ends."""
        self.fh.seek(self._table + 8 * lo)
        offsets = np.frombuffer(self.fh.read(8 * (hi - lo + 2)), dtype="<u8").astype(np.int64)
        if len(offsets) != hi - lo + 2:
            raise VideoReadError(f"{self.path}: truncated frame store entry; run `stadapt prepare --decode` again")
        return offsets

    def _read_bytes(self, start: int, stop: int) -> bytearray:
        buf = bytearray(stop - start)
        self.fh.seek(start)
        if self.fh.readinto(buf) != len(buf):
            raise VideoReadError(f"{self.path}: truncated frame store entry; run `stadapt prepare --decode` again")
        return buf

    def _read_chunks(self, lo: int, hi: int) -> list[memoryview]:
        """The stored files of frames lo..hi, in one read (an H.264 run from its keyframe)."""
        offsets = self._offsets(lo, hi)
        view = memoryview(self._read_bytes(int(offsets[0]), int(offsets[-1])))
        starts = (offsets - offsets[0]).tolist()
        return [view[a:b] for a, b in zip(starts[:-1], starts[1:])]

    def _read_jpegs(self, indices: Sequence[int]) -> tuple[list[torch.Tensor], np.ndarray]:
        """The distinct frames' JPEGs in frame order, and for each index its position among them:
        one read of the offset table, then one read per frame (a clip's frames lie far apart)."""
        unique, inverse = self._wanted(indices)
        lo = int(unique[0])
        offsets = self._offsets(lo, int(unique[-1])).tolist()
        jpegs = [torch.frombuffer(self._read_bytes(offsets[i], offsets[i + 1]), dtype=torch.uint8)
                 for i in (unique - lo).tolist()]
        return jpegs, inverse

    def _read_h264(self, indices: Sequence[int]) -> list[torch.Tensor]:
        unique, inverse = self._wanted(indices)
        h = self.header
        try:
            frames = h264_store.decode_frames(unique.tolist(), self._read_chunks, h["gop"], h["width"], h["height"])
        except (av.FFmpegError, ValueError) as exc:
            raise VideoReadError(f"{self.path}: damaged H.264 in the frame store ({first_line(exc)}); "
                                 "run `stadapt prepare --decode` again") from None
        tensors = [torch.from_numpy(np.ascontiguousarray(frames[int(i)])).permute(2, 0, 1) for i in unique]
        return [tensors[i] for i in inverse]

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "StoreEntry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def store_figures(prepared_root: Path, videos: Sequence[Path], frames_per_video: int = 8) -> dict[str, Any]:
    """The store's size per hour of video and its fidelity: PSNR of stored frames against the
    source decoded again and scaled the same way (what the JPEG encoding loses), over
    `frames_per_video` evenly spaced frames of each of `videos`."""
    store = FrameStore(prepared_root)
    squared_error, values, seconds, frames = 0.0, 0, 0.0, 0
    for video in videos:
        with store.open(video) as entry:
            seconds += entry.num_frames / (entry.header.get("fps") or 25.0)
            frames += entry.num_frames
            wanted = sorted(set(np.linspace(0, entry.num_frames - 1, frames_per_video).round().astype(int).tolist()))
            stored = dict(zip(wanted, entry.read(wanted)))
            short_side = entry.header["short_side"]
        with av.open(str(video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in stored:
                    size = _scaled_size(frame.width, frame.height, short_side)
                    source = upright(scaled_rgb(frame, size), frame.rotation)
                    diff = stored[i].permute(1, 2, 0).numpy().astype(np.float64) - source
                    squared_error += float(np.square(diff).sum())
                    values += diff.size
                if i >= wanted[-1]:
                    break
    total_bytes = sum(entry_path(prepared_root, v).stat().st_size for v in videos)
    mse = squared_error / max(values, 1)
    return {"store_gb_per_hour": round(total_bytes / seconds * 3600 / 1e9, 3) if seconds else None,
            "store_psnr_db": round(float(10 * np.log10(255**2 / mse)), 2) if mse > 0 else None,
            "store_bytes_per_frame": round(total_bytes / frames) if frames else None,
            "store_encoding": {k: store.info[k] for k in ("format", "short_side", "codec", "jpeg_quality", "chroma",
                                                          "gop", "crf") if k in store.info}}
