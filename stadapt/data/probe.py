"""Probe videos once: frame count, frame rate and size, or the reason a file is unusable.

`stadapt prepare` probes every indexed video so that a broken download is reported at
preparation time (with its name and the reason), not as a crash deep inside training.
Each file is opened once with PyAV: the container's stream metadata gives the answer when
it has one; otherwise (WebM/Matroska do not store frame counts) the packets are counted.
Either way the end of the stream is demuxed to catch files cut short by a download.

Results are cached in `probe-cache.json`, keyed by path, size and modification time, so that
a re-run over an unchanged copy of Kinetics probes nothing again.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import av

from stadapt.errors import DataError
from stadapt.fileio import atomic_write_text

CACHE_NAME = "probe-cache.json"
CACHE_VERSION = 1
# Starting worker processes costs seconds (they import the package, torch included), while a
# probe takes milliseconds: below this many files one process is faster.
POOL_MIN_FILES = 256


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


class UnreadableVideo(DataError):
    """A video file that exists but cannot be used (empty, truncated, corrupt, no video)."""

    def __init__(self, path: Union[str, Path], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):  # keep it picklable across worker processes
        return (UnreadableVideo, (str(self.path), self.reason))


def probe_video(path: Union[str, Path]) -> VideoInfo:
    """Open `path` once and describe its first video stream; UnreadableVideo if unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnreadableVideo(path, exc.strerror or "cannot be read") from None
    if size == 0:
        raise UnreadableVideo(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise UnreadableVideo(path, f"not a readable video container ({_reason(exc)})") from None
    try:
        with container:
            return _describe(container, path)
    except av.FFmpegError as exc:
        raise UnreadableVideo(path, f"corrupt ({_reason(exc)})") from None


def _reason(exc: av.FFmpegError) -> str:
    return exc.strerror or type(exc).__name__


def _describe(container: av.container.InputContainer, path: Path) -> VideoInfo:
    if not container.streams:
        raise UnreadableVideo(path, "no streams (truncated, or not a video file)")
    if not container.streams.video:
        raise UnreadableVideo(path, "no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        raise UnreadableVideo(path, "video stream has no frame size")
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise UnreadableVideo(path, "video stream has no frame rate")
    expected_end = _expected_end(stream)

    if stream.frames > 0:
        # The container counts the frames: decode the first one and demux the tail to be sure.
        if next(container.decode(stream), None) is None:
            raise UnreadableVideo(path, "first frame does not decode")
        num_frames = stream.frames
        reached, corrupt = None, False
        if expected_end is not None:
            container.seek(int(expected_end / stream.time_base), stream=stream, backward=True)
            reached, corrupt = _scan(container.demux(stream), stream.time_base)
    else:
        num_frames, decoded = 0, False
        reached, corrupt = None, False
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            num_frames += 1
            if not decoded:
                decoded = bool(packet.decode())
            corrupt = corrupt or packet.is_corrupt
            reached = _later(reached, packet, stream.time_base)
        if num_frames == 0:
            raise UnreadableVideo(path, "no video frames")
        # Decoders with a delay hand out their first frame only when flushed.
        if not decoded and not stream.codec_context.decode(None):
            raise UnreadableVideo(path, "no frame decodes")
    if corrupt:
        raise UnreadableVideo(path, "truncated (the last packets are incomplete)")
    if expected_end is not None and reached is not None:
        slack = max(2 / float(rate), 0.01 * expected_end)
        if reached < expected_end - slack:
            raise UnreadableVideo(path, f"truncated (video stops at {reached:.2f}s of {expected_end:.2f}s)")
    return VideoInfo(num_frames=num_frames, fps=round(float(rate), 6), width=width, height=height)


def _expected_end(stream: av.video.stream.VideoStream) -> Optional[float]:
    """Where the video stream should end, in seconds, by its own header (not the audio's)."""
    start = float((stream.start_time or 0) * stream.time_base) if stream.time_base else 0.0
    if stream.duration and stream.time_base:
        return start + float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:  # Matroska: "00:00:10.010000000"
        try:
            hours, minutes, seconds = tag.split(":")
            return start + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    return None


def _later(reached: Optional[float], packet: av.Packet, time_base: Fraction) -> Optional[float]:
    if packet.pts is None or time_base is None:
        return reached
    end = float((packet.pts + (packet.duration or 0)) * time_base)
    return end if reached is None else max(reached, end)


def _scan(packets: Iterator[av.Packet], time_base: Fraction) -> tuple[Optional[float], bool]:
    """Demux to the end: how far the stream gets, and whether a packet came back cut short."""
    reached, corrupt = None, False
    for packet in packets:
        if packet.size == 0:
            continue
        corrupt = corrupt or packet.is_corrupt
        reached = _later(reached, packet, time_base)
    return reached, corrupt


# -- many files: a cache and a process pool ------------------------------------------------

Outcome = Union[VideoInfo, UnreadableVideo]


class ProbeCache:
    """Probe outcomes keyed by absolute path, valid while the file's size and mtime hold."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}  # a damaged cache only costs a re-probe
            if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                self.entries = data.get("entries") or {}

    @staticmethod
    def _stamp(path: Path) -> Optional[list[int]]:
        try:
            st = path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, path: Path) -> Optional[Outcome]:
        entry = self.entries.get(str(path))
        if not entry or entry.get("stamp") != self._stamp(path):
            return None
        try:
            if "error" in entry:
                return UnreadableVideo(path, entry["error"])
            return VideoInfo(**entry["info"])
        except (TypeError, KeyError):
            return None

    def put(self, path: Path, outcome: Outcome) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        entry: dict = {"stamp": stamp}
        if isinstance(outcome, UnreadableVideo):
            entry["error"] = outcome.reason
        else:
            entry["info"] = asdict(outcome)
        self.entries[str(path)] = entry

    def save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries}) + "\n")


@dataclass
class ProbeStats:
    probed: int = 0
    cached: int = 0


def _probe_outcome(path: Path) -> Outcome:
    try:
        return probe_video(path)
    except UnreadableVideo as exc:
        return exc


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; the parent shuts the pool down for everyone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def probe_many(paths: list[Path], workers: int = 1, cache: Optional[ProbeCache] = None,
               on_result: Optional[Callable[[Path], None]] = None) -> tuple[dict[Path, Outcome], ProbeStats]:
    """Probe absolute `paths` over `workers` processes, taking unchanged files from `cache`.

    New outcomes go into the cache even when interrupted, so that a re-run resumes where
    this one stopped; saving the cache is the caller's call.
    """
    results: dict[Path, Outcome] = {}
    stats = ProbeStats()
    todo = []
    for path in paths:
        hit = cache.get(path) if cache is not None else None
        if hit is None:
            todo.append(path)
            continue
        results[path] = hit
        stats.cached += 1
        if on_result:
            on_result(path)

    def record(path: Path, outcome: Outcome) -> None:
        results[path] = outcome
        stats.probed += 1
        if cache is not None:
            cache.put(path, outcome)
        if on_result:
            on_result(path)

    if workers <= 1 or len(todo) < POOL_MIN_FILES:
        for path in todo:
            record(path, _probe_outcome(path))
        return results, stats
    # forkserver, as forking a parent that runs threads (the progress bar) is unsafe; the
    # server imports this module once and every worker is forked from it ready to run.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                               initializer=_ignore_sigint)
    try:
        chunk = max(1, min(64, len(todo) // (workers * 8)))
        for path, outcome in zip(todo, pool.map(_probe_outcome, todo, chunksize=chunk)):
            record(path, outcome)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results, stats


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
