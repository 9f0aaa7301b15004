"""Videos: every odd or broken file a user may hold, through probe, prepare and the loader.

Readable oddities (one frame, 4K, variable frame rate, rotation, grayscale, 10-bit, 4:4:4, a
wrong extension) must be indexed and load as upright RGB clips; unreadable files (empty,
truncated, text, audio only) are listed in report.json with a reason, and a file that breaks
after `prepare` is skipped by the loader with one warning naming it.
"""

from __future__ import annotations

import json
import logging
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stadapt.cli import main
from stadapt.data import dataset as dataset_module
from stadapt.data import decode
from stadapt.data.dataset import build_dataset
from stadapt.data.decode import read_frames
from stadapt.data.manifest import PreparedDataset, Sample
from stadapt.data.probe import UnreadableVideo, probe_video
from stadapt.data.store import FrameStore, write_store
from stadapt.recipe import load_recipe

SIDE = 32


def noise(frames: int, height: int = SIDE, width: int = SIDE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def marked(frames: int, height: int = SIDE, width: int = 48) -> np.ndarray:
    """Grey frames with a white square in the top-left corner: shows which way is up."""
    images = np.full((frames, height, width, 3), 60, dtype=np.uint8)
    images[:, :8, :8] = 255
    return images


def encode(path: Path, images: np.ndarray, pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None,
           rotation: int = 0) -> Path:
    """H.264 in MP4 (x264 ultrafast, fast enough for 4K); per-frame times in ms when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = images.shape[2], images.shape[1], pix_fmt
        stream.options = {"preset": "ultrafast"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)  # the display matrix phones write
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.rate, frame.pts, frame.time_base = 8000, i * 1024, Fraction(1, 8000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# name → frames a readable file holds
READABLE = {"one_frame.mp4": 1, "uhd_4k.mp4": 2, "vfr.mp4": 10, "rotated.mp4": 6, "gray.mp4": 8,
            "yuv420p10le.mp4": 8, "yuv444p.mp4": 8, "mp4_named.avi": 8}
# name → what probe says about an unreadable file
UNREADABLE = {"zero.mp4": "empty file (0 bytes)", "truncated.webm": "truncated",
              "text.mp4": "not a readable video container", "audio_only.mp4": "no video stream"}


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory, encoded) -> dict[str, Path]:
    """Every kind of file, once per module; tests copy what they need."""
    d = tmp_path_factory.mktemp("odd")
    encode(d / "one_frame.mp4", noise(1))
    encode(d / "uhd_4k.mp4", np.broadcast_to(noise(2, 1, 1) // 2 + 64, (2, 2160, 3840, 3)))
    encode(d / "vfr.mp4", noise(10), pts_ms=[0, 40, 50, 200, 210, 400, 420, 430, 800, 810])
    encode(d / "rotated.mp4", marked(6), rotation=90)
    encode(d / "gray.mp4", noise(8), pix_fmt="gray")
    encode(d / "yuv420p10le.mp4", noise(8), pix_fmt="yuv420p10le")
    encode(d / "yuv444p.mp4", noise(8), pix_fmt="yuv444p")
    (d / "mp4_named.avi").write_bytes(encode(d / "real.mp4", noise(8)).read_bytes())
    (d / "zero.mp4").write_bytes(b"")
    (d / "truncated.webm").write_bytes(encoded[".webm"][: len(encoded[".webm"]) // 2])
    (d / "text.mp4").write_text("path,label\nthis is a CSV file, not a video\n" * 20)
    audio_only(d / "audio_only.mp4")
    return {name: d / name for name in [*READABLE, *UNREADABLE]}


@pytest.mark.parametrize("name", READABLE)
def test_readable_oddities_probe_and_decode(odd_videos, name):
    info = probe_video(odd_videos[name])
    assert info.num_frames == READABLE[name]
    frames = read_frames(odd_videos[name], [0, 1, 20])  # past the end: the last frame again
    assert frames.dtype == np.uint8 and frames.shape[0] == 3 and frames.shape[-1] == 3
    if name == "uhd_4k.mp4":
        assert (info.width, info.height) == (3840, 2160) and frames.shape[1:3] == (2160, 3840)


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_files_are_one_line_naming_the_file(odd_videos, name):
    with pytest.raises(UnreadableVideo) as info:
        probe_video(odd_videos[name])
    assert UNREADABLE[name] in info.value.reason and str(odd_videos[name]) in str(info.value)
    assert "\n" not in str(info.value)


def test_rotated_video_is_upright_in_decord_pyav_and_the_store(odd_videos, tmp_path, monkeypatch):
    """decord applies the display matrix by itself; the PyAV fallback and the store must too."""
    path = odd_videos["rotated.mp4"]
    by_decord = read_frames(path, [0])[0]
    assert by_decord.shape == (48, SIDE, 3)  # stored 48 wide, 32 high; shown turned by 90°
    assert by_decord[-8:, :8].mean() > 200 and by_decord[:8, :8].mean() < 100  # corner went bottom-left

    def broken(*args, **kwargs):
        raise RuntimeError("decord fails today")

    monkeypatch.setattr(decode, "_read_decord", broken)
    by_pyav = read_frames(path, [0])[0]
    assert by_pyav.shape == by_decord.shape and np.abs(by_pyav.astype(int) - by_decord).max() <= 2

    write_store(tmp_path, [Sample(path, {"label": 0})], short_side=SIDE)
    with FrameStore(tmp_path).open(path) as entry:
        stored = entry.read([0])[0].permute(1, 2, 0).numpy()
    assert stored.shape == by_decord.shape and np.abs(stored.astype(int) - by_decord).mean() < 6


@pytest.fixture(scope="module")
def prepared_odd(odd_videos, tmp_path_factory):
    """`stadapt prepare folder` over all of them (plus plain videos), with the store."""
    root = tmp_path_factory.mktemp("odd-folder")
    for name, path in odd_videos.items():
        (root / "videos" / "odd").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "videos" / "odd" / name)
    (root / "videos" / "plain").mkdir()
    for i in range(2):
        encode(root / "videos" / "plain" / f"{i}.mp4", noise(8, seed=i + 1))
    out = root / "prepared"
    code = main(["prepare", "folder", str(root / "videos"), "--out", str(out), "--val-fraction", "0",
                 "--workers", "1", "--decode"])
    return out, code


def test_prepare_lists_what_it_cannot_read(prepared_odd, capsys):
    out, code = prepared_odd
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    train = report["splits"]["train"]
    problems = {Path(p["path"]).name: p for p in train["problems"]}
    assert set(problems) == set(UNREADABLE)
    for name, reason in UNREADABLE.items():
        assert problems[name]["problem"] == "unreadable" and reason in problems[name]["reason"]
    assert (train["indexed"], train["videos"], train["unreadable"]) == (14, 10, 4)
    listed = {Path(s.path).name for s in PreparedDataset.open(out).samples("train")}
    assert listed == set(READABLE) | {"0.mp4", "1.mp4"}
    assert report["store"]["failed"] == []  # every video the manifest lists went into the store


def test_prepare_summary_counts_unreadable(tmp_path, odd_videos, capsys):
    for name in ("zero.mp4", "text.mp4", "gray.mp4", "one_frame.mp4"):
        (tmp_path / "v" / "c").mkdir(parents=True, exist_ok=True)
        shutil.copy(odd_videos[name], tmp_path / "v" / "c" / name)
    assert main(["prepare", "folder", str(tmp_path / "v"), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "train" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:4] == ["train", "2", "0", "2"]  # split, videos, missing, unreadable


@pytest.mark.parametrize("source", ["raw", "prepared"])
def test_loader_gives_clips_of_every_readable_oddity(prepared_odd, source):
    out, _ = prepared_odd
    recipe = load_recipe("demo", [f"data.root={out}", "model.num_classes=2", f"data.source={source}",
                                  "data.num_frames=4", "data.stride=2", "data.crop=32", "data.scale=[32,40]",
                                  "data.test_resize=32"])
    train = build_dataset(recipe, "train", train=True)
    test = build_dataset(recipe, "train", train=False)
    for i, sample in enumerate(train.samples):
        item = train[i]
        assert item["skipped"] == 0 and item["clip"].shape == (3, 4, 32, 32), sample.path
        item = test[i]
        assert item["ok"] and item["clip"].shape == (1, 3, 4, 32, 32), sample.path


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_file_broken_after_prepare_is_skipped_with_one_warning(tmp_path, odd_videos, damage, caplog, capfd,
                                                                monkeypatch):
    monkeypatch.setattr(dataset_module, "_warned", set())
    for cls in ("a", "b"):
        for i in range(2):
            encode(tmp_path / "v" / cls / f"{i}.mp4", noise(8, seed=i))
    assert main(["prepare", "folder", str(tmp_path / "v"), "--out", str(tmp_path / "out"), "--val-fraction", "0"]) == 0
    broken = tmp_path / "v" / "a" / "0.mp4"
    data = broken.read_bytes()
    broken.write_bytes({"empty": b"", "truncated": data[: len(data) // 3], "text": b"not a video\n" * 40}[damage])
    capfd.readouterr()
    recipe = load_recipe("demo", [f"data.root={tmp_path / 'out'}", "model.num_classes=2", "data.source=raw",
                                  "data.num_frames=4", "data.stride=2", "data.crop=32", "data.scale=[32,40]"])
    dataset = build_dataset(recipe, "train", train=True)
    bad = next(i for i, s in enumerate(dataset.samples) if s.path == broken)
    with caplog.at_level(logging.WARNING, logger="stadapt.data"):
        items = [dataset[bad] for _ in range(3)] + [dataset[i] for i in range(len(dataset))]
    assert all(item["clip"].shape == (3, 4, 32, 32) for item in items)
    assert items[0]["index"] != bad and items[0]["skipped"] >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(broken) in warnings[0], warnings
    assert capfd.readouterr().err == ""  # decord's own "ERROR opening" line is kept off the terminal
    assert torch.equal(dataset[bad]["clip"], items[0]["clip"])
