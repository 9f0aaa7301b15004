"""Shared fixtures: tiny real videos, encoded once per session and copied where needed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import stadapt.data  # noqa: F401  (loads PyAV's FFmpeg first)
from stadapt.data.encode import write_video

FRAMES, SIZE = 6, 32
logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random weights at WARNING


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def encoded(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of one 6-frame 32×32 video per container suffix."""
    folder = tmp_path_factory.mktemp("encoded")
    # Noise, so that the files are large enough for a cut to land in the frame data.
    noise = np.random.default_rng(0).integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    return {suffix: write_video(folder / f"v{suffix}", noise).read_bytes() for suffix in (".mp4", ".webm", ".avi", ".mkv")}


@pytest.fixture
def make_video(encoded) -> Callable[..., Path]:
    """make_video(path, kind="ok"|"corrupt"|"empty"|"truncated") writes a file of that kind."""

    def make(path: Path, kind: str = "ok") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encoded.get(path.suffix.lower(), encoded[".mp4"])
        if kind == "corrupt":
            data = np.random.default_rng(len(str(path))).integers(0, 256, 4000, dtype=np.uint8).tobytes()
        elif kind == "empty":
            data = b""
        elif kind == "truncated":
            data = data[: len(data) // 2]
        path.write_bytes(data)
        return path

    return make
