"""The paper's (Table 8) spatial augmentations on uint8 clips.

A clip enters as T frames of 3×H×W uint8 (a T×3×H×W tensor or a list of frames, as the
readers give them) and leaves as 3×T×S×S uint8 (training) or views×3×T×S×S (testing). Every
frame of one clip gets the same crop, flip and RandAugment ops, so motion stays intact. Work
on the CPU stays in uint8 and cuts the crop out before resizing, in one copy into the
channels-last layout the fast uint8 resize kernel wants. Clips stay uint8 up to the model,
which normalises them itself (stadapt.model.classifier); the clip's final layout is one copy
(`channels_first`).
"""

from __future__ import annotations

import math
import random
import re
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stadapt.errors import RecipeError
from stadapt.recipe import DataConfig

RRC_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's standard aspect-ratio range
_RANDAUGMENT = re.compile(r"rand(-(m\d+|n\d+|mstd\d+(\.\d+)?|mmax\d+|inc[01]|p(\d+)?(\.\d+)?))*")


Frames = Union[torch.Tensor, Sequence[torch.Tensor]]  # T×3×H×W, or T frames of 3×H×W


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of T×3×H×W uint8 frames (uint8 stays uint8)."""
    if clip.shape[-2:] == (height, width):
        return clip
    clip = clip.contiguous(memory_format=torch.channels_last)  # the fast uint8 kernel's layout
    return F.interpolate(clip, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def crop_resize(frames: Frames, top: int, left: int, height: int, width: int,
                out_height: int, out_width: int) -> torch.Tensor:
    """The same box of every frame, resized to out_height×out_width: T×3×h×w (channels-last)."""
    box = torch.empty((len(frames), height, width, 3), dtype=torch.uint8)
    for out, frame in zip(box, frames):
        out.copy_(frame[:, top:top + height, left:left + width].permute(1, 2, 0))
    return resize(box.permute(0, 3, 1, 2), out_height, out_width)


def short_side_jitter(frames: Frames, scale: Sequence[int], crop: int, rng: np.random.Generator) -> torch.Tensor:
    """Resize the short side to a random length in `scale`, then cut a random crop×crop square.

    Done as one crop-then-resize: the square in the resized frame is a box of
    crop×short/side pixels in the original one.
    """
    h, w = frames[0].shape[-2:]
    side = int(rng.integers(scale[0], scale[1] + 1))
    box = min(round(crop * min(h, w) / side), h, w)
    top = int(rng.integers(0, h - box + 1))
    left = int(rng.integers(0, w - box + 1))
    return crop_resize(frames, top, left, box, box, crop, crop)


def random_resized_crop(frames: Frames, area: Sequence[float], crop: int, rng: np.random.Generator) -> torch.Tensor:
    """A random box of `area` × the frame's area and aspect ratio in 3/4..4/3, resized to crop×crop."""
    h, w = frames[0].shape[-2:]
    log_ratio = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))
    for _ in range(10):
        target = h * w * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(*log_ratio))
        bw, bh = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < bw <= w and 0 < bh <= h:
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            return crop_resize(frames, top, left, bh, bw, crop, crop)
    # No box fitted: the centre box with the ratio clamped into range, as torchvision does.
    ratio = min(max(w / h, RRC_RATIO[0]), RRC_RATIO[1])
    bw, bh = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
    bw, bh = min(bw, w), min(bh, h)
    return crop_resize(frames, (h - bh) // 2, (w - bw) // 2, bh, bw, crop, crop)


def parse_randaugment(spec: str) -> dict[str, float]:
    """Check a timm RandAugment string (`rand-m7-n4-mstd0.5-inc1`); return its settings."""
    if not _RANDAUGMENT.fullmatch(spec):
        raise RecipeError(f"data.randaugment = {spec!r}: expected 'rand' followed by -mN, -nN, -mstdX, -mmaxN, "
                          "-inc0/1 or -pX, e.g. rand-m7-n4-mstd0.5-inc1")
    settings = {}
    for part in spec.split("-")[1:]:
        key = re.match(r"[a-z]+", part).group(0)
        settings[key] = float(part[len(key):])
    return settings


class ClipRandAugment:
    """timm's RandAugment with the same ops and magnitudes for every frame of a clip.

    timm draws its choices from Python's and NumPy's global generators; seeding both with the
    same value before each frame repeats the draws. The global states are restored afterwards.
    """

    def __init__(self, spec: str, crop: int):
        from timm.data.auto_augment import rand_augment_transform

        parse_randaugment(spec)  # one clear line for a bad string, before timm asserts
        self.ops = rand_augment_transform(spec, {"translate_const": int(crop * 0.45)})

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        seed = int(rng.integers(2**32))
        saved_python, saved_numpy = random.getstate(), np.random.get_state()
        frames = clip.permute(0, 2, 3, 1).numpy()
        out = []
        try:
            for frame in frames:
                random.seed(seed)
                np.random.seed(seed)
                out.append(np.asarray(self.ops(Image.fromarray(np.ascontiguousarray(frame)))))
        finally:
            random.setstate(saved_python)
            np.random.set_state(saved_numpy)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


class TrainTransform:
    """Resize/crop (short-side jitter or RandomResizedCrop), mirror, RandAugment: T frames → 3×T×S×S."""

    def __init__(self, data: DataConfig):
        self.data = data
        self.randaugment = ClipRandAugment(data.randaugment, data.crop) if data.randaugment else None

    def __call__(self, frames: Frames, rng: np.random.Generator) -> torch.Tensor:
        d = self.data
        if d.train_resize == "short_side_jitter":
            clip = short_side_jitter(frames, d.scale, d.crop, rng)
        else:
            clip = random_resized_crop(frames, d.rrc_area, d.crop, rng)
        if d.mirror and rng.random() < 0.5:
            clip = clip.flip(-1)
        if self.randaugment is not None:
            clip = self.randaugment(clip, rng)
        return channels_first([clip])[0]


class EvalTransform:
    """Short side to data.test_resize, then 1 centre crop or 3 crops along the long side:
    T frames → S×3×T×crop×crop."""

    def __init__(self, data: DataConfig):
        if data.test_resize < data.crop:
            raise RecipeError(f"data.test_resize = {data.test_resize} must be at least data.crop ({data.crop})")
        self.data = data

    def __call__(self, frames: Frames) -> torch.Tensor:
        d = self.data
        h, w = frames[0].shape[-2:]
        short = min(h, w)
        clip = crop_resize(frames, 0, 0, h, w, round(h * d.test_resize / short), round(w * d.test_resize / short))
        return channels_first(spatial_crops(clip, d.crop, d.test_views.spatial))


def channels_first(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """T×3×H×W uint8 clips on the CPU, in any memory layout → N×3×T×H×W, in one contiguous copy.

    Through NumPy: moving the channels of a channels-last uint8 clip out from innermost,
    NumPy's copy takes less than half of torch's time (benchmarks/clip_layout.py), about an
    eighth of a training clip's loading time."""
    t, channels, h, w = clips[0].shape
    out = np.empty((len(clips), channels, t, h, w), dtype=np.uint8)  # C order: np.stack would keep the inputs' order
    for view, clip in zip(out, clips):
        view[...] = clip.numpy().transpose(1, 0, 2, 3)
    return torch.from_numpy(out)


def spatial_crops(clip: torch.Tensor, crop: int, count: int) -> list[torch.Tensor]:
    """`count` (1 or 3) crop×crop views: the centre, or start/centre/end along the long side."""
    h, w = clip.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    if count == 1:
        return [clip[..., top:top + crop, left:left + crop]]
    if w >= h:
        return [clip[..., top:top + crop, x:x + crop] for x in (0, left, w - crop)]
    return [clip[..., y:y + crop, left:left + crop] for y in (0, top, h - crop)]


