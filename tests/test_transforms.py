import random

import numpy as np
import pytest
import torch

from stadapt import recipe
from stadapt.data.transforms import (
    EvalTransform,
    TrainTransform,
    parse_randaugment,
    short_side_jitter,
    spatial_crops,
)
from stadapt.errors import RecipeError
from stadapt.recipe import DataConfig


def still_clip(t: int = 4, h: int = 72, w: int = 96, seed: int = 0) -> torch.Tensor:
    """T identical frames of a random (asymmetric) image, T×3×H×W uint8."""
    frame = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))
    return frame.expand(t, 3, h, w).clone()


def frames_equal(clip: torch.Tensor) -> bool:  # 3×T×H×W
    return all(torch.equal(clip[:, 0], clip[:, i]) for i in range(clip.shape[1]))


@pytest.mark.parametrize("resize", ["short_side_jitter", "random_resized_crop"])
def test_train_output_shape_and_same_geometry_for_every_frame(resize):
    data = DataConfig(train_resize=resize, scale=[64, 80], crop=64, mirror=True)
    out = TrainTransform(data)(still_clip(), np.random.default_rng(1))
    assert out.shape == (3, 4, 64, 64) and out.dtype == torch.uint8
    assert frames_equal(out)


def test_flip_is_all_frames_or_none():
    clip = still_clip()
    plain = DataConfig(scale=[72, 72], crop=72, mirror=False)
    mirrored = DataConfig(scale=[72, 72], crop=72, mirror=True)
    flips = 0
    for seed in range(8):
        a = TrainTransform(plain)(clip, np.random.default_rng(seed))
        b = TrainTransform(mirrored)(clip, np.random.default_rng(seed))
        assert frames_equal(b)
        if not torch.equal(a, b):
            assert torch.equal(a.flip(-1), b)
            flips += 1
    assert 0 < flips < 8


def test_short_side_jitter_crop_is_inside_the_frame():
    clip = still_clip(h=64, w=128)
    for seed in range(10):
        out = short_side_jitter(clip, [64, 64], 64, np.random.default_rng(seed))
        # no scaling at scale == short side: the output is an exact window of the frame
        row = out[0, 0, 0]
        assert any(torch.equal(row, clip[0, 0, 0, x:x + 64]) for x in range(65))


def test_randaugment_strings():
    assert parse_randaugment("rand-m7-n4-mstd0.5-inc1") == {"m": 7, "n": 4, "mstd": 0.5, "inc": 1}
    assert parse_randaugment("rand") == {}
    for bad in ("rand-m7-x3", "randm7", "rand-m-n4", "aa-m7"):
        with pytest.raises(RecipeError, match="data.randaugment"):
            parse_randaugment(bad)


def test_randaugment_same_ops_for_every_frame_and_global_state_untouched():
    data = DataConfig(scale=[64, 64], crop=64, mirror=False, randaugment="rand-m9-n3-mstd0.5-inc1")
    random.seed(5)
    np.random.seed(5)
    expected_py, expected_np = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    transform = TrainTransform(data)
    outs = [transform(still_clip(t=6), np.random.default_rng(seed)) for seed in range(6)]
    assert all(frames_equal(out) for out in outs)
    assert len({out.numpy().tobytes() for out in outs}) > 1  # different clips, different ops
    assert (random.random(), np.random.random()) == (expected_py, expected_np)


def test_three_crops_along_the_long_side():
    columns = torch.arange(300).to(torch.uint8)[None, None, None, :].expand(2, 3, 224, 300)
    data = DataConfig(crop=224, test_resize=224, test_views=recipe.TestViews(temporal=1, spatial=3))
    views = EvalTransform(data)(columns.clone())
    assert views.shape == (3, 3, 2, 224, 224)
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 38, 76]
    tall = columns.transpose(-1, -2).contiguous()
    assert [c[0, 0, 0, 0].item() for c in spatial_crops(tall, 224, 3)] == [0, 38, 76]
    centre = EvalTransform(DataConfig(crop=224, test_resize=224))(columns.clone())
    assert centre.shape == (1, 3, 2, 224, 224) and int(centre[0, 0, 0, 0, 0]) == 38


def test_test_resize_scales_the_short_side_first():
    data = DataConfig(crop=32, test_resize=48, test_views=recipe.TestViews(temporal=1, spatial=1))
    assert EvalTransform(data)(still_clip(h=96, w=128)).shape == (1, 3, 4, 32, 32)
    with pytest.raises(RecipeError, match="test_resize"):
        EvalTransform(DataConfig(crop=224, test_resize=200))


def test_clips_leave_the_transforms_contiguous_with_each_frame_in_its_place():
    # frames that differ, so a wrong time or channel order shows
    frames = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (4, 3, 64, 96), dtype=np.uint8))
    data = DataConfig(scale=[64, 64], crop=64, mirror=False, test_resize=64,
                      test_views=recipe.TestViews(temporal=1, spatial=3))
    train = TrainTransform(data)(frames, np.random.default_rng(0))
    assert train.is_contiguous() and train.shape == (3, 4, 64, 64)
    box_left = [left for left in range(33) if torch.equal(train[:, 0], frames[0, :, :, left:left + 64])]
    assert len(box_left) == 1  # the crop of frame 0, channels first, unscaled
    assert torch.equal(train, frames[:, :, :, box_left[0]:box_left[0] + 64].permute(1, 0, 2, 3))
    views = EvalTransform(data)(frames)
    assert views.is_contiguous() and views.shape == (3, 3, 4, 64, 64)
    for view, left in zip(views, (0, 16, 32)):
        assert torch.equal(view, frames[..., left:left + 64].permute(1, 0, 2, 3))
