import numpy as np
import pytest

from stadapt.data.decode import count_frames, read_frames
from stadapt.data.synthetic import PAIRS, SYNTHETIC_CLASSES, generate_synthetic
from stadapt.errors import DataError


def test_classes_come_in_time_reversed_pairs():
    assert SYNTHETIC_CLASSES[:4] == ["move_left", "move_right", "move_up", "move_down"]
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES) == 2 * len(PAIRS)


def test_writes_decodable_videos_of_each_codec(tmp_path):
    seen = []
    videos = generate_synthetic(tmp_path, classes=4, videos_per_class=3, frames=12, size=(48, 32), on_video=seen.append)
    assert len(videos) == 12 and seen == [p for p, _ in videos]
    assert {p.suffix for p, _ in videos} == {".mp4", ".webm", ".avi"}
    for path, name in videos:
        assert path.parent == tmp_path / name
        assert count_frames(path) == 12
        assert read_frames(path, [0, 11]).shape == (2, 32, 48, 3)


def test_deterministic_for_a_seed(tmp_path):
    a = generate_synthetic(tmp_path / "a", classes=2, videos_per_class=3, frames=8, size=(32, 32), seed=3)
    b = generate_synthetic(tmp_path / "b", classes=2, videos_per_class=3, frames=8, size=(32, 32), seed=3)
    c = generate_synthetic(tmp_path / "c", classes=2, videos_per_class=3, frames=8, size=(32, 32), seed=4)
    frames = lambda videos: [read_frames(p, range(8)) for p, _ in videos]  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(frames(a), frames(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(frames(a), frames(c)))


def _object_x(clip: np.ndarray) -> np.ndarray:
    """Horizontal centre of what differs from the temporal median (the moving object), per frame."""
    energy = np.abs(clip.astype(np.float32) - np.median(clip, axis=0)).sum(axis=(1, 3))  # T×W
    xs = np.arange(clip.shape[2])
    return (energy * xs).sum(1) / energy.sum(1)


def test_pairs_are_time_reversals_in_distribution(tmp_path):
    videos = generate_synthetic(tmp_path, classes=2, videos_per_class=12, frames=16, size=(64, 48))
    stats = {"move_left": [], "move_right": []}
    for path, name in videos:
        x = _object_x(read_frames(path, range(16)))
        stats[name].append((x[:8].mean(), x[8:].mean()))
    left, right = np.array(stats["move_left"]), np.array(stats["move_right"])
    # (the median frame is a rough background estimate, so allow a miss or two)
    assert (left[:, 0] > left[:, 1]).mean() > 0.8 and (right[:, 0] < right[:, 1]).mean() > 0.8
    # first-half positions of one class look like second-half positions of the other
    assert abs(left[:, 0].mean() - right[:, 1].mean()) < 6
    assert abs(left[:, 1].mean() - right[:, 0].mean()) < 6
    # and a time-blind statistic, the mean frame, does not separate them
    mean_x = lambda arr: arr.mean()  # noqa: E731
    assert abs(mean_x(left) - mean_x(right)) < 6


@pytest.mark.parametrize("kwargs", [{"classes": 3}, {"classes": 40}, {"size": (33, 32)}, {"frames": 1}])
def test_bad_arguments_are_one_line(tmp_path, kwargs):
    with pytest.raises(DataError) as err:
        generate_synthetic(tmp_path, **kwargs)
    assert "\n" not in str(err.value)


def test_large_videos_for_the_loader_benchmark(tmp_path):
    (path, _), = generate_synthetic(tmp_path, classes=2, videos_per_class=1, frames=40, size=(340, 256))[:1]
    assert read_frames(path, [39]).shape == (1, 256, 340, 3)
