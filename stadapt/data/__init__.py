"""Data: dataset indexers, manifests, decoding, sampling, transforms, the prepared store."""

from pathlib import Path

# decord and PyAV each bundle FFmpeg. Whichever loads first provides the shared symbols, and
# with decord's first PyAV cannot open its VP9 encoder. Load PyAV's before anything imports decord.
import av  # noqa: F401

# What `prepare folder` indexes and `predict DIR` answers: one list, so that the two agree.
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                            ".3gp", ".ogv", ".ts"})


def is_video_file(path: Path) -> bool:
    """A file with a video suffix that is not hidden (`._clip.mp4` is macOS metadata, not a video)."""
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".") and path.is_file()
