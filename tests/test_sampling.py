import numpy as np

from stadapt.data.sampling import clip_indices, dense_indices, uniform_indices
from stadapt.recipe import DataConfig


def test_dense_training_start_is_random_and_in_range():
    starts = set()
    for seed in range(50):
        idx = dense_indices(300, 8, 16, np.random.default_rng(seed))
        assert idx.shape == (1, 8)
        assert (np.diff(idx[0]) == 16).all() and idx[0, -1] < 300
        starts.add(int(idx[0, 0]))
    assert len(starts) > 20 and min(starts) >= 0 and max(starts) <= 300 - 113


def test_dense_testing_views_are_evenly_spaced():
    assert dense_indices(300, 8, 16)[0, 0] == (300 - 113) // 2  # one view: the centred clip
    views = dense_indices(300, 8, 16, views=3)
    assert views.shape == (3, 8)
    assert list(views[:, 0]) == [0, 94, 187] and views[-1, -1] == 299


def test_dense_short_video_repeats_the_last_frame():
    assert list(dense_indices(40, 8, 8, np.random.default_rng(0))[0]) == [0, 8, 16, 24, 32, 39, 39, 39]
    assert (dense_indices(40, 8, 8, views=3) == dense_indices(40, 8, 8, views=1)).all()


def test_uniform_training_one_random_frame_per_segment():
    for seed in range(20):
        idx = uniform_indices(80, 8, np.random.default_rng(seed))[0]
        assert all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(idx))
    draws = {tuple(uniform_indices(80, 8, np.random.default_rng(s))[0]) for s in range(20)}
    assert len(draws) > 10


def test_uniform_testing_centres_and_offset_views():
    assert list(uniform_indices(80, 8)[0]) == [5, 15, 25, 35, 45, 55, 65, 75]
    views = uniform_indices(80, 8, views=2)
    assert list(views[0]) == [2, 12, 22, 32, 42, 52, 62, 72]
    assert list(views[1]) == [7, 17, 27, 37, 47, 57, 67, 77]


def test_uniform_short_video_repeats_the_last_frame():
    assert list(uniform_indices(5, 8, np.random.default_rng(0))[0]) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert uniform_indices(5, 8, views=3).shape == (3, 8)


def test_segments_stay_inside_start_and_stop_frame():
    data = DataConfig(sampling="uniform", num_frames=8)
    for seed in range(20):
        idx = clip_indices(data, 1000, np.random.default_rng(seed), start_frame=200, stop_frame=279)
        assert idx.min() >= 200 and idx.max() <= 279
    assert list(clip_indices(data, 1000, None, 1, 200, 279)[0]) == [205, 215, 225, 235, 245, 255, 265, 275]
    dense = DataConfig(sampling="dense", num_frames=4, stride=10)
    assert list(clip_indices(dense, 1000, None, 1, 500, 509)[0]) == [500, 509, 509, 509]
    assert clip_indices(dense, 50, None, 1, 40, 900).max() == 49  # stop past the end: clamp


def test_same_rng_same_indices():
    data = DataConfig()
    a = clip_indices(data, 300, np.random.default_rng([0, 1, 2]))
    b = clip_indices(data, 300, np.random.default_rng([0, 1, 2]))
    assert (a == b).all()
