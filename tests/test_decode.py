import numpy as np
import pytest

from stadapt.data import decode
from stadapt.data.decode import VideoReadError, count_frames, read_frames
from stadapt.data.encode import write_video

N = 30


def marked_frames(n: int = N) -> np.ndarray:
    """Frame i is a flat grey of level 10 + 8 i: its mean tells which frame came back."""
    levels = 10 + 8 * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, 32, 48, 3)).astype(np.uint8)


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(round((f.mean() - 10) / 8)) for f in frames]


@pytest.fixture(scope="module", params=[".mp4", ".webm", ".avi"])
def marked_video(request, tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("marked") / f"marked{request.param}", marked_frames(), gop=8)


def test_exact_indices(marked_video):
    indices = [0, 17, 3, 3, 29, 8]
    frames = read_frames(marked_video, indices)
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
    assert frame_numbers(frames) == indices
    assert count_frames(marked_video) == N


def test_past_the_end_repeats_the_last_frame(marked_video):
    assert frame_numbers(read_frames(marked_video, [28, 30, 45])) == [28, 29, 29]


def test_pyav_fallback_reads_the_same_frames(marked_video, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decord is broken today")

    monkeypatch.setattr(decode, "_read_decord", broken)
    assert frame_numbers(read_frames(marked_video, [5, 1, 40])) == [5, 1, 29]


def test_corrupt_and_empty_files_name_the_file(tmp_path, marked_video):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a video at all " * 50)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(marked_video.read_bytes()[:200])
    for path in (empty, garbage, truncated, tmp_path / "missing.avi"):
        with pytest.raises(VideoReadError) as err:
            read_frames(path, [0])
        message = str(err.value)
        assert str(path) in message and "\n" not in message
    with pytest.raises(VideoReadError, match="empty file"):
        count_frames(empty)
