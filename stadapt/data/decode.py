"""Read chosen frames of a video file: decord for random access, PyAV where decord fails.

decord seeks and decodes only up to the frames asked for; PyAV decodes from the start, which
is slower but reads files that decord rejects (odd containers, broken indexes). Any failure
of both becomes one `VideoReadError` line naming the file, which the dataset can skip.

Frames come out upright: a phone video's rotation (its display matrix) is applied, as decord
does on its own and as players do; the PyAV path and the frame store rotate alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterator, Sequence

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
        with _quiet_stderr():
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
        with _quiet_stderr():
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
                got[i] = upright_rgb(frame)
            if i >= last_needed:
                break
    if last_frame is None:
        raise ValueError("no video frames")
    if last_index not in got:
        got[last_index] = upright_rgb(last_frame)
    return np.stack([got[min(int(i), last_index)] for i in wanted])


def upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """H×W×3 RGB of a decoded frame turned by its display rotation (counter-clockwise degrees)."""
    return upright(frame.to_ndarray(format="rgb24"), frame.rotation)


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """`image` (H×W×C) turned counter-clockwise by `rotation` degrees (a multiple of 90)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while decord works: it logs "ERROR opening ..." from C++ for
    every file it rejects, past its logging level, and the caller reports the failure in one
    line of its own. Only in the main thread of a process (DataLoader workers are processes),
    so that no other thread's output is lost meanwhile."""
    if threading.current_thread() is not threading.main_thread() or threading.active_count() > 1:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to silence
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reason(exc: BaseException, path: Path) -> str:
    """A short reason without the file name (the message names it once) or decord's stack trace."""
    text = getattr(exc, "strerror", None) or str(exc)
    lines = text.replace(str(path), "").strip().splitlines()
    return (lines[0].strip(" :,.'") if lines else type(exc).__name__)[:200]
