"""Which frames of a video make a clip: dense (fixed stride) or uniform (one per segment).

Training draws from an rng (random start, random frame per segment); testing is fixed and
spreads `views` clips over the video. Every function returns absolute, 0-based frame indices
shaped views×T, so callers can read the union of frames once. A video (or segment) shorter
than the clip repeats its last frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from stadapt.recipe import DataConfig


def dense_indices(length: int, num_frames: int, stride: int, rng: Optional[np.random.Generator] = None,
                  views: int = 1) -> np.ndarray:
    """Frames start, start+stride, ...: a random start when training (rng given), else `views`
    evenly spaced starts (one view: the centred clip)."""
    span = (num_frames - 1) * stride + 1
    room = max(length - span, 0)
    if rng is not None:
        starts = rng.integers(0, room + 1, size=1)
    elif views == 1:
        starts = np.array([room // 2])
    else:
        starts = np.round(np.linspace(0, room, views)).astype(np.int64)
    indices = starts[:, None] + np.arange(num_frames)[None, :] * stride
    return np.minimum(indices, length - 1)


def uniform_indices(length: int, num_frames: int, rng: Optional[np.random.Generator] = None,
                    views: int = 1) -> np.ndarray:
    """One frame in each of `num_frames` equal segments: a random one when training, else the
    centre, and with several views positions offset evenly inside each segment."""
    if length < num_frames:
        return np.tile(np.minimum(np.arange(num_frames), length - 1), (1 if rng is not None else views, 1))
    edges = np.arange(num_frames + 1) * (length / num_frames)
    first = np.floor(edges[:-1]).astype(np.int64)
    if rng is not None:
        sizes = np.maximum(np.floor(edges[1:]).astype(np.int64) - first, 1)
        return (first + rng.integers(0, sizes))[None, :]
    offsets = (np.arange(views) + 0.5) / views
    positions = edges[None, :-1] + offsets[:, None] * (length / num_frames)
    return np.minimum(np.floor(positions).astype(np.int64), length - 1)


def clip_indices(data: DataConfig, num_video_frames: int, rng: Optional[np.random.Generator] = None,
                 views: int = 1, start_frame: Optional[int] = None, stop_frame: Optional[int] = None) -> np.ndarray:
    """Indices (views×T) for a recipe's sampling, within frames start_frame..stop_frame (both
    included, 0-based; EPIC-Kitchens segments) when given, else the whole video."""
    if num_video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_video_frames}")
    last = num_video_frames - 1
    first = min(max(start_frame or 0, 0), last)
    stop = last if stop_frame is None else min(max(stop_frame, first), last)
    length = stop - first + 1
    if data.sampling == "dense":
        local = dense_indices(length, data.num_frames, data.stride, rng, views)
    else:
        local = uniform_indices(length, data.num_frames, rng, views)
    return first + local
