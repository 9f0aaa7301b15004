"""A small motion-centric data set of real encoded videos whose classes need time to tell apart.

Classes come in pairs (move_left/move_right, grow/shrink, ...). A video of the second class
of a pair is rendered exactly like one of the first and then played backwards, with the same
distribution of random parameters, so the two classes have the same distribution of frame
sets: any statistic that ignores frame order (colour histograms, mean images, a bag of
per-frame features) is at chance within a pair, and only a model that reasons over time can
separate them. Bright objects of random shape and tint move over dark, nearly flat backgrounds,
from random start positions at random speeds, and the files rotate through H.264 MP4, VP9
WebM and MPEG-4 AVI so that no class is tied to a codec. The scenes are plain on purpose: the
demo's frozen backbone is a tiny *random* ViT whose features follow whatever varies most in a
frame, so the object, not background clutter or colour, has to be what varies.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from stadapt.data.encode import write_video
from stadapt.errors import DataError

# (forward, backward) pairs; the backward class is the forward one played in reverse.
PAIRS: list[tuple[str, str]] = [
    ("move_left", "move_right"),
    ("move_up", "move_down"),
    ("grow", "shrink"),
    ("appear", "disappear"),
    ("rotate_cw", "rotate_ccw"),
    ("brighten", "darken"),
    ("split", "merge"),
    ("orbit_cw", "orbit_ccw"),
]
SYNTHETIC_CLASSES: list[str] = [name for pair in PAIRS for name in pair]
EXTENSIONS = (".mp4", ".webm", ".avi")
SHAPES = ("circle", "square", "triangle", "bar")


def generate_synthetic(videos_dir: Path, classes: int = 8, videos_per_class: int = 20, frames: int = 32,
                       size: tuple[int, int] = (80, 64), seed: int = 0, fps: int = 25,
                       on_video: Callable[[Path], None] | None = None) -> list[tuple[Path, str]]:
    """Write `classes × videos_per_class` videos under videos_dir/{class}/; return (path, class) pairs.

    `size` is (width, height), both even. The output depends only on the arguments.
    """
    width, height = size
    if classes < 2 or classes % 2 or classes > len(SYNTHETIC_CLASSES):
        raise DataError(f"synthetic classes = {classes}: must be an even number from 2 to {len(SYNTHETIC_CLASSES)} "
                        "(classes come in time-reversed pairs)")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise DataError(f"synthetic size = {width}x{height}: width and height must be even and at least 16")
    if frames < 2:
        raise DataError(f"synthetic frames = {frames}: must be at least 2")
    if videos_per_class < 1:
        raise DataError(f"synthetic videos_per_class = {videos_per_class}: must be at least 1")
    videos_dir = Path(videos_dir)
    out = []
    for c in range(classes):
        name = SYNTHETIC_CLASSES[c]
        for k in range(videos_per_class):
            # Both members of a pair draw from one distribution (independently, so that no video
            # of one class is the exact reversal of a video of the other).
            clip = render(PAIRS[c // 2][0], np.random.default_rng([seed, c, k]), frames, width, height)
            if c % 2:
                clip = clip[::-1]
            path = write_video(videos_dir / name / f"{name}_{k:03d}{EXTENSIONS[k % len(EXTENSIONS)]}", clip, fps=fps)
            out.append((path, name))
            if on_video is not None:
                on_video(path)
    return out


def render(motion: str, rng: np.random.Generator, frames: int, width: int, height: int) -> np.ndarray:
    """Frames (T×H×W×3 uint8) of the forward member of a pair, e.g. "move_left"."""
    short = min(width, height)
    background = _background(rng, width, height)
    colour = rng.integers(180, 256, 3)
    shape = SHAPES[rng.integers(len(SHAPES))] if not motion.startswith("rotate") else SHAPES[2 + rng.integers(2)]
    r = short * rng.uniform(0.16, 0.26)
    t = np.linspace(0.0, 1.0, frames)
    ones = np.ones(frames)
    cx = np.full(frames, rng.uniform(r, width - r))
    cy = np.full(frames, rng.uniform(r, height - r))
    radius, angle = r * ones, np.full(frames, rng.uniform(0, 2 * math.pi))
    opacity, gain, second = ones, ones, None
    if motion == "move_left":
        d = (width - 2 * r) * rng.uniform(0.5, 0.9)
        cx = rng.uniform(r + d, width - r) - d * t
    elif motion == "move_up":
        d = (height - 2 * r) * rng.uniform(0.5, 0.9)
        cy = rng.uniform(r + d, height - r) - d * t
    elif motion == "grow":
        r0 = short * rng.uniform(0.05, 0.09)
        radius = r0 * (1 + rng.uniform(1.5, 3.0) * t)
    elif motion == "appear":
        t0 = rng.uniform(0.2, 0.6)
        opacity = np.clip((t - t0) / 0.1, 0.0, 1.0)
    elif motion == "rotate_cw":  # image y points down, so a growing angle turns clockwise on screen
        angle = angle + rng.uniform(0.5, 1.0) * math.pi * t
    elif motion == "brighten":
        g0 = rng.uniform(0.35, 0.6)
        gain = g0 + (1 - g0) * t
    elif motion == "split":
        d = short * rng.uniform(0.2, 0.35)
        phi = rng.uniform(0, 2 * math.pi)
        cx = np.full(frames, width / 2 + rng.uniform(-0.1, 0.1) * width)
        cy = np.full(frames, height / 2 + rng.uniform(-0.1, 0.1) * height)
        dx, dy = d * t * math.cos(phi), d * t * math.sin(phi)
        second = (cx - dx, cy - dy)
        cx, cy = cx + dx, cy + dy
        radius = radius * 0.7
    elif motion == "orbit_cw":
        ring = short * rng.uniform(0.18, 0.28)
        phi = rng.uniform(0, 2 * math.pi) + rng.uniform(1.0, 1.8) * math.pi * t
        cx = width / 2 + ring * np.cos(phi)
        cy = height / 2 + ring * np.sin(phi)
        radius = radius * 0.7
    else:
        raise ValueError(f"unknown motion {motion!r}")

    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        frame = background.copy()
        centres = [(cx[i], cy[i])] + ([(second[0][i], second[1][i])] if second is not None else [])
        for x, y in centres:
            _paint(frame, shape, x, y, radius[i], angle[i], colour, opacity[i])
        out[i] = frame if gain[i] == 1 else (frame * gain[i]).astype(np.uint8)
    return out


def _paint(frame: np.ndarray, shape: str, x: float, y: float, r: float, angle: float, colour: np.ndarray,
           opacity: float) -> None:
    """Blend the shape into `frame` in place, touching only its bounding box."""
    height, width = frame.shape[:2]
    reach = 1.2 * r + 1
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 1, width)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 1, height)
    if x0 >= x1 or y0 >= y1 or opacity <= 0:
        return
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - x
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - y
    mask = _shape_mask(shape, dx, dy, r, angle)
    region = frame[y0:y1, x0:x1]
    region[mask] = (1 - opacity) * region[mask] + opacity * colour


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static dark background: a random shade with a faint smooth colour variation."""
    coarse = rng.integers(0, 256, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    base = rng.uniform(15, 70, 3)
    return np.clip(base + 0.12 * (smooth - 128), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Pixels inside `shape` of size `r` centred at (0, 0) of the offsets dx, dy, turned by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "bar":
        return (np.abs(u) <= r) & (np.abs(v) <= 0.4 * r)
    inside = np.ones(u.shape, bool)  # triangle: three half-planes
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.5 * r
    return inside
