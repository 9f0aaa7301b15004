import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stadapt.data import store as store_module
from stadapt.data.decode import VideoReadError, read_frames
from stadapt.data.manifest import Sample
from stadapt.data.store import FrameStore, entry_path, store_figures, write_store
from stadapt.data.synthetic import generate_synthetic
from stadapt.errors import DataError


@pytest.fixture()
def videos(tmp_path):
    generated = generate_synthetic(tmp_path / "videos", classes=2, videos_per_class=3, frames=20, size=(96, 64))
    return [p for p, _ in generated]


def samples_of(paths):
    return [Sample(p, {"label": 0}) for p in paths]


def test_round_trip_matches_the_resized_video(tmp_path, videos):
    summary = write_store(tmp_path / "prepared", samples_of(videos), short_side=48)
    assert (summary["videos"], summary["frames"], summary["written"], summary["failed"]) == (6, 120, 6, [])
    assert summary["bytes"] == sum(entry_path(tmp_path / "prepared", v).stat().st_size for v in videos)
    store = FrameStore(tmp_path / "prepared")
    for video in videos:
        with store.open(video) as entry:
            assert entry.num_frames == 20
            got = torch.stack(entry.read([0, 7, 7, 19, 25]))
        assert got.shape == (5, 3, 48, 72) and got.dtype == torch.uint8
        raw = torch.from_numpy(read_frames(video, [0, 7, 7, 19, 19])).permute(0, 3, 1, 2).float()
        expected = F.interpolate(raw, size=(48, 72), mode="bilinear", antialias=True)
        assert (got.float() - expected).abs().mean() < 6  # JPEG and a different resampler


def test_small_videos_are_not_enlarged(tmp_path, videos):
    write_store(tmp_path / "p", samples_of(videos[:1]), short_side=256)
    with FrameStore(tmp_path / "p").open(videos[0]) as entry:
        assert entry.read([0])[0].shape == (3, 64, 96)


def test_incremental_skips_unchanged_and_redoes_changed(tmp_path, videos):
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos), short_side=48)
    seen = []
    again = write_store(root, samples_of(videos + videos[:2]), short_side=48, on_video=seen.append)
    assert (again["written"], again["unchanged"], again["videos"]) == (0, 6, 6) and len(seen) == 6
    os.utime(videos[0], ns=(1, 1))
    changed = write_store(root, samples_of(videos), short_side=48, workers=2)
    assert (changed["written"], changed["unchanged"]) == (1, 5)
    assert write_store(root, samples_of(videos), short_side=32)["written"] == 6
    info = json.loads((root / "store" / "info.json").read_text())
    assert info["short_side"] == 32 and info["videos"] == 6


def test_an_interrupted_write_leaves_no_entry(tmp_path, videos, monkeypatch):
    calls = []

    def failing_encode(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return b"\xff" * 10

    monkeypatch.setattr(store_module, "encode_frame", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "prepared", samples_of(videos[:1]))
    assert [p for p in (tmp_path / "prepared").rglob("*") if p.is_file()] == []


def test_unreadable_videos_are_listed_not_fatal(tmp_path, videos):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 500)
    summary = write_store(tmp_path / "prepared", samples_of([bad, videos[0], tmp_path / "gone.mp4"]), short_side=32)
    assert summary["videos"] == 1
    assert [f["path"] for f in summary["failed"]] == [str(bad), str(tmp_path / "gone.mp4")]
    assert all(f["error"].startswith(f["path"]) for f in summary["failed"])


def test_reader_errors_name_the_file(tmp_path, videos):
    with pytest.raises(DataError, match="info.json: missing"):
        FrameStore(tmp_path / "nothing")
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos[:1]), short_side=32)
    store = FrameStore(root)
    with pytest.raises(VideoReadError, match=str(videos[1])):
        store.open(videos[1])
    entry = entry_path(root, videos[0])
    entry.write_bytes(entry.read_bytes()[:-5])
    with pytest.raises(VideoReadError, match="damaged frame store entry"):
        store.open(videos[0])
    assert np.isfinite(write_store(root, samples_of(videos[:1]), short_side=32)["seconds"])
    with store.open(videos[0]) as e:  # rewritten, since the damaged entry had no valid header
        assert e.num_frames == 20


def test_the_encoding_is_recorded_and_a_new_one_re_encodes(tmp_path, videos):
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos[:2]), short_side=48)
    info = json.loads((root / "store" / "info.json").read_text())
    assert (info["format"], info["jpeg_quality"], info["chroma"]) == (store_module.FORMAT, 85, "420")
    with FrameStore(root).open(videos[0]) as entry:
        assert (entry.header["jpeg_quality"], entry.header["chroma"]) == (85, "420")
        default = entry.read([3])[0]
    smaller = entry_path(root, videos[0]).stat().st_size
    assert write_store(root, samples_of(videos[:2]), short_side=48, quality=95, chroma="444")["written"] == 2
    assert entry_path(root, videos[0]).stat().st_size > smaller
    with FrameStore(root).open(videos[0]) as entry:
        finer = entry.read([3])[0]
    raw = torch.from_numpy(read_frames(videos[0], [3])).permute(0, 3, 1, 2).float()
    expected = F.interpolate(raw, size=(48, 72), mode="bilinear", antialias=True)[0]
    assert (finer.float() - expected).abs().mean() < (default.float() - expected).abs().mean()
    with pytest.raises(DataError, match="JPEG quality 0"):
        write_store(root, samples_of(videos[:1]), quality=0)


def test_a_format_1_store_stays_readable_and_is_re_encoded(tmp_path, videos, monkeypatch):
    root = tmp_path / "prepared"
    monkeypatch.setattr(store_module, "FORMAT", 1)
    write_store(root, samples_of(videos[:2]), short_side=48)
    monkeypatch.undo()
    with FrameStore(root).open(videos[1]) as entry:
        assert entry.header["format"] == 1 and entry.read([0, 19])[1].shape == (3, 48, 72)
    assert write_store(root, samples_of(videos[:2]), short_side=48)["written"] == 2


def test_a_store_of_an_unknown_format_is_refused_in_one_line(tmp_path, videos):
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos[:1]), short_side=48)
    info = root / "store" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "format": 9}))
    with pytest.raises(DataError, match=r"format 9, this stadapt reads 1, 2, 3; run `stadapt prepare --decode` again"):
        FrameStore(root)


def test_store_figures_give_size_per_hour_and_psnr_against_the_source(tmp_path, videos):
    root = tmp_path / "prepared"
    figures = {}
    for quality in (50, 95):
        write_store(root, samples_of(videos), short_side=64, quality=quality)
        figures[quality] = store_figures(root, videos, frames_per_video=4)
    total = sum(entry_path(root, v).stat().st_size for v in videos)
    seconds = 6 * 20 / 25  # six videos of 20 frames at 25 fps
    assert figures[95]["store_gb_per_hour"] == round(total / seconds * 3600 / 1e9, 3)
    assert figures[95]["store_bytes_per_frame"] == round(total / 120)
    assert figures[95]["store_encoding"] == {"format": 2, "short_side": 64, "jpeg_quality": 95, "chroma": "420"}
    assert 30 < figures[50]["store_psnr_db"] < figures[95]["store_psnr_db"] < 70
    assert figures[50]["store_gb_per_hour"] < figures[95]["store_gb_per_hour"]


def test_an_h264_store_gives_the_same_frames_in_a_fraction_of_the_bytes(tmp_path, videos):
    jpeg, h264 = tmp_path / "jpeg", tmp_path / "h264"
    jpeg_bytes = write_store(jpeg, samples_of(videos), short_side=48)["bytes"]
    summary = write_store(h264, samples_of(videos), short_side=48, codec="h264")
    assert (summary["videos"], summary["frames"], summary["written"], summary["failed"]) == (6, 120, 6, [])
    assert summary["bytes"] < 0.5 * jpeg_bytes
    info = json.loads((h264 / "store" / "info.json").read_text())
    assert (info["format"], info["codec"], info["gop"], info["crf"]) == (3, "h264", 4, 20)
    assert (FrameStore(h264).codec, FrameStore(jpeg).codec) == ("h264", "jpeg")
    indices = [0, 3, 4, 5, 5, 11, 19, 25]  # keyframes, frames after them, a repeat, past the end
    for video in videos:
        with FrameStore(h264).open(video) as entry, FrameStore(jpeg).open(video) as reference:
            got = torch.stack(entry.read(indices)).float()
            want = torch.stack(reference.read(list(range(20)))).float()
        assert got.shape == (8, 3, 48, 72)
        for i, frame in zip(indices, got):
            error = (frame - want[min(i, 19)]).abs().mean()
            # the same frame, not its neighbour: the synthetic objects move from frame to frame
            assert error < 3 and error < (frame - want[min(i, 19) - 1]).abs().mean()
    figures = store_figures(h264, videos)
    assert figures["store_psnr_db"] > 33 and figures["store_encoding"]["codec"] == "h264"


def test_an_h264_store_of_odd_sizes_and_a_change_of_codec_re_encodes(tmp_path, videos):
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos[:2]), short_side=48)
    assert write_store(root, samples_of(videos[:2]), short_side=47, codec="h264", gop=2)["written"] == 2
    assert write_store(root, samples_of(videos[:2]), short_side=47, codec="h264", gop=2)["unchanged"] == 2
    with FrameStore(root).open(videos[0]) as entry:
        assert (entry.header["format"], entry.header["gop"]) == (3, 2)
        assert [f.shape for f in entry.read([2, 3, 19])] == [(3, 47, 70)] * 3  # x264 codes 48×70
        with pytest.raises(VideoReadError, match="holds no JPEGs"):
            entry.read_jpegs([2])
    assert write_store(root, samples_of(videos[:2]), short_side=47)["written"] == 2  # back to JPEG
    with pytest.raises(DataError, match="--store 'png': expected one of jpeg, h264"):
        write_store(root, samples_of(videos[:1]), codec="png")
    with pytest.raises(DataError, match="keyframe interval 0: must be at least 1"):
        write_store(root, samples_of(videos[:1]), codec="h264", gop=0)


def test_a_damaged_h264_entry_is_reported_not_decoded(tmp_path, videos):
    root = tmp_path / "prepared"
    write_store(root, samples_of(videos[:1]), short_side=48, codec="h264")
    entry = entry_path(root, videos[0])
    data = bytearray(entry.read_bytes())
    data[:60] = bytes(60)  # zeros over the first keyframe's sequence headers: its frames cannot decode
    entry.write_bytes(bytes(data))
    with FrameStore(root).open(videos[0]) as e, pytest.raises(VideoReadError, match="damaged H.264"):
        e.read([0, 1, 2, 3])
