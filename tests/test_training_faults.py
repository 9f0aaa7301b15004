"""Training faults: unreadable videos, non-finite losses, damaged or unsafe checkpoints,
a kill or a full disk while saving, a second run on the same --out, a dead DDP peer.

SIGTERM → checkpoint → --resume is tested in test_engine.py
(test_sigterm_to_a_training_process_leaves_a_checkpoint_that_resumes,
test_stopped_and_resumed_run_is_bitwise_the_uninterrupted_one); not repeated here."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_prepared

from stadapt.cli import main
from stadapt.data import dataset as dataset_module
from stadapt.data.manifest import PreparedDataset
from stadapt.engine import train as train_module
from stadapt.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from stadapt.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 classes × 4 tiny videos; the second training video is broken after `prepare`."""
    root = make_prepared(tmp_path_factory.mktemp("faults"), classes=2, videos_per_class=4, frames=8,
                         size=(64, 64), decode=False)
    broken = PreparedDataset.open(root).samples("train")[1].path
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 cut short by a download")
    return root


@pytest.fixture(scope="module")
def recipe(data, tmp_path_factory) -> Path:
    recipe = {
        "data": {"dataset": "synthetic", "root": str(data), "num_frames": 4, "sampling": "uniform",
                 "scale": [64, 72], "crop": 64, "test_resize": 64, "test_views": {"temporal": 1, "spatial": 1},
                 "max_bad_fraction": 0.5},
        "model": {"backbone": "stadapt-tiny-vit", "pretrained": "none", "adapter": {"width": 8},
                  "num_classes": 2, "dropout": 0.0},
        "train": {"steps": 4, "batch_size": 3, "lr": 1e-3, "warmup_steps": 1, "precision": "fp32", "workers": 0,
                  "compile": False, "eval_every": 1000, "save_every": 1000, "log_every": 1},
    }
    path = tmp_path_factory.mktemp("recipe") / "faults.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_cli(recipe: Path, out: Path, *overrides: str, resume: bool = False) -> int:
    return main(["train", str(recipe), *[a for o in overrides for a in ("--set", o)], "--out", str(out),
                 *(["--resume"] if resume else [])])


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- unreadable videos --------------------------------------------------------------------------


def test_unreadable_video_is_skipped_with_one_warning_and_training_goes_on(recipe, data, tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dataset_module, "_warned", set())
    broken = PreparedDataset.open(data).samples("train")[1].path
    with caplog.at_level(logging.WARNING, logger="stadapt.data"):
        assert train_cli(recipe, tmp_path / "run", "train.steps=4") == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "stadapt.data"]
    assert len(warnings) == 1 and str(broken) in warnings[0]
    logged = events(tmp_path / "run")
    assert sum(e.get("skipped", 0) for e in logged) >= 1  # reported per logged window
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4]
    assert (tmp_path / "run" / "adapter.safetensors").is_file()


def test_too_much_unreadable_data_stops_the_run_with_one_line(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train_cli(recipe, tmp_path / "run", "data.max_bad_fraction=0", "train.steps=8") == 2
    err = one_error_line(capsys)
    assert "could not be read in epoch 0, more than data.max_bad_fraction = 0.0" in err and "report.json" in err


# -- non-finite losses -------------------------------------------------------------------------


def loss_broken_at(monkeypatch, bad_steps: set[int], value: float) -> None:
    """The loss of the steps in `bad_steps` (1-based) becomes `value` (inf, nan)."""
    original, calls = train_module.classification_loss, []

    def loss(logits, labels):
        calls.append(1)
        result = original(logits, labels)
        return result * value if len(calls) in bad_steps else result

    monkeypatch.setattr(train_module, "classification_loss", loss)


def test_a_non_finite_step_is_skipped_and_reported_and_training_goes_on(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    loss_broken_at(monkeypatch, {2}, float("inf"))
    assert train_cli(recipe, tmp_path / "run", "data.max_bad_fraction=1") == 0
    assert "step 2: non-finite loss, update skipped (1 in a row, at most 5)" in capsys.readouterr().out
    logged = events(tmp_path / "run")
    assert [e["step"] for e in logged if e.get("event") == "nonfinite_loss"] == [2]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["step"] == 4
    trained = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["model"]
    assert all(torch.isfinite(t).all() for t in trained.values())


def test_max_bad_steps_in_a_row_stop_the_run_with_one_line(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    loss_broken_at(monkeypatch, set(range(1, 100)), float("inf"))
    assert train_cli(recipe, tmp_path / "run", "train.max_bad_steps=2", "data.max_bad_fraction=1") == 1
    err = one_error_line(capsys)
    assert "stopped at step 2: 2 non-finite losses in a row (train.max_bad_steps)" in err


# -- checkpoints ----------------------------------------------------------------------------------


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.fixture(scope="module")
def finished_run(recipe, tmp_path_factory) -> Path:
    cwd = os.getcwd()
    work = tmp_path_factory.mktemp("finished")
    os.chdir(work)
    try:
        assert train_cli(recipe, work / "run", "train.steps=2", "data.max_bad_fraction=1") == 0
    finally:
        os.chdir(cwd)
    return work / "run"


@pytest.mark.parametrize("damage, message", [
    ("code", "holds pickled objects other than tensors and numbers (posix.system); refused without running them"),
    ("truncated", "not a readable checkpoint, truncated or damaged"),
    ("random", "not a checkpoint that can be read safely (damaged, or pickled by other code); "
               "refused without running it"),
    ("foreign", "not a stadapt checkpoint"),
])
def test_resume_from_an_unsafe_or_damaged_checkpoint_is_one_line(finished_run, recipe, tmp_path, monkeypatch,
                                                                 capsys, damage, message):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / CHECKPOINT_FILE
    if damage == "code":
        state = torch.load(last, weights_only=True)
        state["optimizer"]["param_groups"][0]["hook"] = _Exploit()
        torch.save(state, last)
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "random":
        last.write_bytes(random.Random(0).randbytes(2048))
    else:
        torch.save({"state_dict": {"w": torch.ones(2)}}, last)
    assert train_cli(recipe, run, "train.steps=2", "data.max_bad_fraction=1", resume=True) == 2
    err = one_error_line(capsys)
    assert f"{CHECKPOINT_FILE}: " in err and message in err
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_any_bytes_as_a_checkpoint_are_one_error(tmp_path):
    """Random bytes reach corners of torch's weights-only unpickler that raise IndexError, not
    UnpicklingError; every one must still be a CheckpointError line."""
    path = tmp_path / "last.pt"
    for seed in range(40):
        data = random.Random(seed).randbytes(random.Random(seed).randint(0, 3000))
        path.write_bytes(data if seed % 2 else b"\x80\x02" + data)  # half of them start like a pickle
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)


SAVER = """
import sys, torch
from stadapt.engine.checkpoint import save_checkpoint
step = 0
print("ready", flush=True)
while True:
    step += 1
    model = {f"w{i}": torch.full((250_000,), float(step)) for i in range(4)}
    save_checkpoint(sys.argv[1], {"step": step, "model": model})
    print(step, flush=True)
"""


def test_sigkill_while_saving_never_replaces_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "run" / CHECKPOINT_FILE
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert saver.stdout.readline().strip() == "1"
        period = time.monotonic() - started
        seen = 1
        for k in range(6):
            time.sleep(period * (k + 1) / 7)
            os.kill(saver.pid, signal.SIGSTOP)  # frozen mid-write: what is on disk now?
            state = load_checkpoint(path)
            assert all(torch.equal(t, torch.full_like(t, state["step"])) for t in state["model"].values())
            assert state["step"] >= seen
            seen = state["step"]
            os.kill(saver.pid, signal.SIGCONT)
        saver.kill()
        saver.wait(10)
    finally:
        if saver.poll() is None:
            saver.kill()
        saver.stdout.close()
    state = load_checkpoint(path)
    assert state["step"] >= seen
    assert all(torch.equal(t, torch.full_like(t, state["step"])) for t in state["model"].values())


def test_full_disk_while_saving_a_checkpoint_keeps_the_last_good_one(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:  # the second checkpoint does not fit
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train_cli(recipe, tmp_path / "run", "train.steps=4", "train.save_every=1", "data.max_bad_fraction=1") == 2
    err = one_error_line(capsys)
    last = tmp_path / "run" / CHECKPOINT_FILE
    assert f"{last}: not written, the disk is full (No space left on device); the previous last.pt is kept" in err
    monkeypatch.undo()
    assert load_checkpoint(last)["step"] == 1
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]
    assert train_cli(recipe, tmp_path / "run", "train.steps=4", "train.save_every=1", "data.max_bad_fraction=1",
                     resume=True) == 0  # room again: it resumes from step 1


# -- two runs, one directory ---------------------------------------------------------------------


def test_a_second_training_process_on_the_same_out_is_refused(recipe, tmp_path, monkeypatch, capsys):
    """Two real processes (test_engine.py covers a lock held in-process and a stale lock file)."""
    monkeypatch.chdir(tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "stadapt", "train", str(recipe), "--set", "train.steps=100000",
                              "--set", "data.max_bad_fraction=1", "--out", "run"],
                             cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        metrics = tmp_path / "run" / "metrics.jsonl"
        while not metrics.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1]
        capsys.readouterr()
        assert train_cli(recipe, tmp_path / "run", "data.max_bad_fraction=1") == 2
        err = one_error_line(capsys)
        assert f"is in use by another `stadapt train` (PID {first.pid} on {socket.gethostname()})" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM  # the first run was not disturbed: it saved and stopped
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["step"] >= 1


# -- distributed ----------------------------------------------------------------------------------

WORKER = """
import os, signal, sys
from stadapt.engine import train as t
if os.environ["RANK"] == "1":
    original = t.Trainer._step
    def step(self, batches):
        if self.pos.step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # like the OOM killer: no goodbye to the peer
        return original(self, batches)
    t.Trainer._step = step
from stadapt.cli import run
sys.argv = ["stadapt", *sys.argv[1:]]
run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_ddp_peer_makes_the_job_exit_with_a_message_not_hang(recipe, tmp_path):
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "STADAPT_DIST_TIMEOUT_S": "15"}
    args = [sys.executable, "-c", WORKER, "train", str(recipe), "--set", "train.steps=50",
            "--set", "train.batch_size=2", "--set", "data.max_bad_fraction=1", "--out", "run"]
    ranks = [subprocess.Popen(args, cwd=tmp_path, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        _, err = ranks[0].communicate(timeout=150)
    finally:
        for rank in ranks:
            if rank.poll() is None:
                rank.kill()
            rank.communicate()
    assert ranks[1].returncode == -signal.SIGKILL
    assert ranks[0].returncode == 1, err
    assert "Traceback" not in err, err  # (torch's own warnings may come before)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: lost contact with another training process (") and "see its log" in last, err
