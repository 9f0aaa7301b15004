"""Read chosen frames of a video file: decord for random access, PyAV where decord fails.

decord seeks and decodes only up to the frames asked for; PyAV decodes from the start, which
is slower but reads files that decord rejects (odd containers, broken indexes). Any failure
of both becomes one `VideoReadError` line naming the file, which the dataset can skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import decord
import numpy as np

from stadapt.errors import DataError

decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg messages would repeat our one line


class VideoReadError(DataError):
    """A video that cannot be opened or decoded."""


def read_frames(path: Path, indices: Sequence[int]) -> np.ndarray:
    """Frames `indices` (0-based) as N×H×W×3 uint8 RGB; indices past the end give the last frame."""
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0 or wanted.min() < 0:
        raise ValueError(f"frame indices must be non-negative and not empty, got {list(indices)}")
    _check_file(path)
    try:
        return _read_decord(path, wanted)
    except Exception as exc:  # decord raises its own error types and sometimes plain ones
        first = _reason(exc, path)
    try:
        return _read_pyav(path, wanted)
    except Exception as exc:
        raise VideoReadError(f"{path}: cannot decode (decord: {first}; PyAV: {_reason(exc, path)})") from None


def count_frames(path: Path) -> int:
    """The number of decodable frames (decord's index; PyAV counts by decoding when that fails)."""
    _check_file(path)
    try:
        n = len(decord.VideoReader(str(path), num_threads=1))
        if n > 0:
            return n
        first = "no frames"
    except Exception as exc:
        first = _reason(exc, path)
    try:
        with av.open(str(path)) as container:
            n = sum(1 for _ in container.decode(video=0))
    except Exception as exc:
        raise VideoReadError(f"{path}: cannot decode (decord: {first}; PyAV: {_reason(exc, path)})") from None
    if n == 0:
        raise VideoReadError(f"{path}: no video frames")
    return n


def _check_file(path: Path) -> None:
    try:
        size = Path(path).stat().st_size
    except FileNotFoundError:
        raise VideoReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise VideoReadError(f"{path}: cannot open ({exc.strerror})") from None
    if size == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes)")


def _read_decord(path: Path, wanted: np.ndarray) -> np.ndarray:
    reader = decord.VideoReader(str(path), num_threads=1)
    n = len(reader)
    if n == 0:
        raise ValueError("no frames")
    unique, inverse = np.unique(np.minimum(wanted, n - 1), return_inverse=True)
    frames = reader.get_batch(unique.tolist()).asnumpy()
    return frames[inverse]


def _read_pyav(path: Path, wanted: np.ndarray) -> np.ndarray:
    """Decode from the start up to the last wanted frame; missing tail frames repeat the last one."""
    needed = set(wanted.tolist())
    last_needed = int(wanted.max())
    got: dict[int, np.ndarray] = {}
    last_index, last_frame = -1, None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            last_index, last_frame = i, frame
            if i in needed:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last_needed:
                break
    if last_frame is None:
        raise ValueError("no video frames")
    if last_index not in got:
        got[last_index] = last_frame.to_ndarray(format="rgb24")
    return np.stack([got[min(int(i), last_index)] for i in wanted])


def _reason(exc: BaseException, path: Path) -> str:
    """A short reason without the file name (the message names it once) or decord's stack trace."""
    text = getattr(exc, "strerror", None) or str(exc)
    lines = text.replace(str(path), "").strip().splitlines()
    return (lines[0].strip(" :,.'") if lines else type(exc).__name__)[:200]
