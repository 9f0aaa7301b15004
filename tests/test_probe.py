import os
from fractions import Fraction

import av
import pytest

from stadapt.data.probe import ProbeCache, UnreadableVideo, VideoInfo, probe_many, probe_video
from stadapt.errors import DataError


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".mkv"])
def test_probe_reads_frames_rate_and_size(tmp_path, make_video, suffix):
    # WebM/Matroska store no frame count: these are counted by demuxing.
    assert probe_video(make_video(tmp_path / f"v{suffix}")) == VideoInfo(num_frames=6, fps=25.0, width=32, height=32)


@pytest.mark.parametrize("name, kind, reason", [
    ("zero.mp4", "empty", "empty file (0 bytes)"),
    ("noise.avi", "corrupt", "not a readable video container"),
    ("cut.webm", "truncated", "truncated"),
    ("cut.mp4", "truncated", ""),  # the index (moov) sits at the end: FFmpeg says why, in its words
    ("cut.avi", "truncated", ""),
])
def test_unusable_files_raise_one_line_naming_file_and_reason(tmp_path, make_video, name, kind, reason):
    path = make_video(tmp_path / name, kind)
    with pytest.raises(UnreadableVideo) as info:
        probe_video(path)
    assert isinstance(info.value, DataError)
    assert str(info.value).startswith(f"{path}: ") and reason in info.value.reason
    assert "\n" not in str(info.value)


def test_no_video_stream(tmp_path):
    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame(format="s16", layout="mono", samples=800)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.rate, frame.pts, frame.time_base = 8000, 0, Fraction(1, 8000)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(UnreadableVideo, match="no video stream"):
        probe_video(path)


def test_cache_skips_unchanged_files_and_reprobes_changed_ones(tmp_path, make_video):
    good, bad = make_video(tmp_path / "a.mp4"), make_video(tmp_path / "b.avi", "corrupt")
    cache_file = tmp_path / "probe-cache.json"
    cache = ProbeCache(cache_file)
    results, stats = probe_many([good, bad], cache=cache)
    cache.save()
    assert (stats.probed, stats.cached) == (2, 0) and isinstance(results[bad], UnreadableVideo)

    results, stats = probe_many([good, bad], cache=ProbeCache(cache_file))
    assert (stats.probed, stats.cached) == (0, 2)
    assert results[good].num_frames == 6 and "not a readable" in results[bad].reason

    make_video(bad)  # repaired: new size and mtime
    os.utime(bad, ns=(1, 1))
    results, stats = probe_many([good, bad], cache=ProbeCache(cache_file))
    assert (stats.probed, stats.cached) == (1, 1) and results[bad].num_frames == 6


def test_damaged_cache_only_costs_a_reprobe(tmp_path, make_video):
    (tmp_path / "probe-cache.json").write_text("{not json")
    _, stats = probe_many([make_video(tmp_path / "a.mp4")], cache=ProbeCache(tmp_path / "probe-cache.json"))
    assert stats.probed == 1


def test_worker_processes_give_the_same_answers(tmp_path, make_video, monkeypatch):
    monkeypatch.setattr("stadapt.data.probe.POOL_MIN_FILES", 0)
    paths = [make_video(tmp_path / f"{i}.webm") for i in range(3)] + [make_video(tmp_path / "z.mp4", "empty")]
    results, stats = probe_many(paths, workers=2)
    assert stats.probed == 4
    assert [getattr(results[p], "num_frames", None) for p in paths] == [6, 6, 6, None]
    assert results[paths[-1]].reason == "empty file (0 bytes)"
