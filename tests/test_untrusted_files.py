"""Files: untrusted weights never run code, damaged ones are one clear error, and a
save cut short (SIGKILL, a full disk) never replaces the last good file."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save_file

import stadapt
from stadapt import fileio
from stadapt.cli import main
from stadapt.errors import CheckpointError, DiskFullError
from stadapt.model import artifact

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.backbone=stadapt-tiny-vit", "model.pretrained=none", "data.num_frames=4", "data.crop=64",
        "data.scale=[64,72]", "data.test_views.temporal=1", "model.adapter.width=16", "model.num_classes=3"]
NAMES = {"label": ["a", "b", "c"]}


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.fixture(scope="module")
def adapter_bytes(tmp_path_factory) -> bytes:
    recipe = stadapt.load_recipe("k400_vitb", TINY)
    path = tmp_path_factory.mktemp("adapter") / "adapter.safetensors"
    return stadapt.save_adapter(stadapt.build_model(recipe), path, recipe=recipe, class_names=NAMES).read_bytes()


def metadata_of(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])["__metadata__"]


def damaged(data: bytes, kind: str, tmp_path: Path) -> Path:
    path = tmp_path / "adapter.safetensors"
    if kind == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "header cut":
        path.write_bytes(data[:20])
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a pickle":
        path.write_bytes(pickle.dumps({"w": _Exploit()}))
    elif kind == "foreign safetensors":
        save_file({"weight": torch.zeros(3)}, str(path))
    else:  # a stadapt adapter whose metadata was edited
        meta = metadata_of(data)
        meta.update({"yaml objects": {"recipe": "model: !!python/object/apply:os.system ['touch pwned-by-yaml']\n"},
                     "no recipe": {"recipe": None},
                     "bad class names": {"class_names": "{oops"}}[kind])
        save_file(load(data), str(path), metadata={k: v for k, v in meta.items() if v is not None})
    return path


@pytest.mark.parametrize("kind, message", [
    ("truncated", "not a readable safetensors file (Error while deserializing header: incomplete metadata"),
    ("header cut", "not a readable safetensors file"),
    ("random bytes", "not a readable safetensors file"),
    ("empty", "not a readable safetensors file (Error while deserializing header: header too small)"),
    ("a pickle", "not a readable safetensors file"),
    ("foreign safetensors", "not a stadapt adapter (format None)"),
    ("yaml objects", "its metadata 'recipe' cannot be read (could not determine a constructor"),
    ("no recipe", "its metadata lacks 'recipe'"),
    ("bad class names", "its metadata 'class_names' cannot be read"),
])
def test_damaged_or_foreign_adapter_is_one_error(adapter_bytes, tmp_path, monkeypatch, kind, message):
    monkeypatch.chdir(tmp_path)
    path = damaged(adapter_bytes, kind, tmp_path)
    with pytest.raises(CheckpointError) as info:
        stadapt.load_model(tmp_path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.glob("pwned*"))


def test_backbone_checkpoint_in_torch_zip_format_with_code_is_refused(tmp_path, monkeypatch):
    """test_model.py covers a raw pickle; torch.save's zip archive takes another loader path."""
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"visual.proj": _Exploit()}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused without running them"):
        evil = f"model.pretrained={tmp_path / 'evil.pt'}"
        stadapt.build_model(stadapt.load_recipe("k400_vitb", [*TINY[:1], evil, *TINY[2:]]))
    assert not (tmp_path / "pwned-by-pickle").exists()


SAVER = """
import sys, torch, stadapt
recipe = stadapt.load_recipe("k400_vitb", sys.argv[2:])
model = stadapt.build_model(recipe)
print("ready", flush=True)
step = 0
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(step)
    stadapt.save_adapter(model, sys.argv[1], recipe=recipe, class_names={"label": ["a", "b", "c"]})
    print(step, flush=True)
"""


def test_sigkill_while_saving_never_replaces_the_last_good_adapter(tmp_path):
    """A process saves in a loop and is killed at moments spread over the save; every time, the
    file on disk is a whole adapter of one step, never a mix or a stump."""
    path = tmp_path / "run" / "adapter.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path), *TINY, "model.adapter.width=256"],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert saver.stdout.readline().strip() == "1"
        period = time.monotonic() - started  # one save
        last = 1
        for k in range(6):
            time.sleep(period * (k + 1) / 7)  # land at different points of a save
            os.kill(saver.pid, signal.SIGSTOP)  # freeze it mid-write, look, let it go on
            tensors, _ = artifact.read_adapter(path)
            values = {float(t.flatten()[k]) for t in tensors.values() for k in (0, -1)}
            assert len(values) == 1 and values.pop() >= last
            last = max(values | {last})
            os.kill(saver.pid, signal.SIGCONT)
        saver.kill()  # SIGKILL, no clean-up of any kind
        saver.wait(10)
    finally:
        if saver.poll() is None:
            saver.kill()
    saver.stdout.close()
    model = stadapt.load_model(path.parent)
    assert model.class_names == NAMES
    steps = {float(p.detach().flatten()[0]) for n, p in model.named_parameters() if p.requires_grad}
    assert len(steps) == 1 and steps.pop() >= 1
    # what the kill leaves beside it is hidden temporary files (ours, or the safetensors writer's
    # own when the kill lands inside it), never a second or partial adapter
    leftovers = {p.name for p in path.parent.iterdir()} - {path.name}
    assert all(name.startswith(".") and "tmp" in name for name in leftovers), leftovers


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_saving_an_adapter_keeps_the_previous_one(adapter_bytes, tmp_path, monkeypatch):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(adapter_bytes)
    recipe = stadapt.load_recipe("k400_vitb", TINY)
    model = stadapt.build_model(recipe)

    def half_then_full(tensors, filename, metadata=None):  # some bytes land, then the disk fills up
        Path(filename).write_bytes(adapter_bytes[:1000])
        enospc()

    monkeypatch.setattr(artifact, "save_file", half_then_full)
    with pytest.raises(DiskFullError) as info:
        stadapt.save_adapter(model, path, recipe=recipe)
    assert str(info.value) == (f"{path}: not written, the disk is full (No space left on device); "
                               "the previous adapter.safetensors is kept")
    assert path.read_bytes() == adapter_bytes and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_full_disk_hidden_by_the_writer_is_still_reported(tmp_path, monkeypatch):
    """torch.save turns ENOSPC into RuntimeError('... file write failed'): the free space decides."""
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")

    def torch_like(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . "
                           "PytorchStreamWriter failed writing file data/3: file write failed")

    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(fileio.os, "statvfs", lambda folder: Full)
    full = r"last.pt: not written, the disk is full \(\[enforce fail.*the previous last.pt is kept"
    with pytest.raises(DiskFullError, match=full):
        with fileio.atomic_path(path) as tmp:
            torch_like(tmp)
    assert path.read_bytes() == b"old"
    monkeypatch.undo()
    with pytest.raises(RuntimeError):  # with room on the disk, the error is what it was
        with fileio.atomic_path(path) as tmp:
            torch_like(tmp)


def test_full_disk_during_prepare_keeps_the_previous_manifests(tmp_path, make_video, monkeypatch, capsys):
    for cls in ("a", "b"):
        for i in range(2):
            make_video(tmp_path / "videos" / cls / f"{i}.mp4")
    out = tmp_path / "out"
    assert main(["prepare", "folder", str(tmp_path / "videos"), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    make_video(tmp_path / "videos" / "c" / "0.mp4")
    make_video(tmp_path / "videos" / "c" / "1.mp4")
    capsys.readouterr()
    stage = fileio._stage

    def first_file_then_full(files, staged):  # the first staged file fits, the next does not
        stage(dict(list(files.items())[:1]), staged)
        enospc()

    monkeypatch.setattr(fileio, "_stage", first_file_then_full)
    assert main(["prepare", "folder", str(tmp_path / "videos"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not written, the disk is full (No space left on device)" in err
    assert "the previous classes.txt, train.csv, val.csv, report.json are kept" in err
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    def without_cache(files):
        return {k: v for k, v in files.items() if k != "probe-cache.json"}

    assert without_cache(after) == without_cache(before)
