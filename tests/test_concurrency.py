"""Concurrency: two commands writing the same directory never corrupt each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stadapt.cli import main
from stadapt.data.manifest import PreparedDataset
from stadapt.data.prepare import LOCK_NAME
from stadapt.fileio import FileLock

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HOLD = ("import sys; from stadapt.fileio import FileLock; lock = FileLock(sys.argv[1]); "
        "print(lock.acquire(), flush=True); sys.stdin.read(); lock.release()")


@pytest.fixture
def videos(tmp_path, make_video) -> Path:
    for cls in ("a", "b"):
        for i in range(6):
            make_video(tmp_path / "videos" / cls / f"{i}.mp4")
    return tmp_path / "videos"


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that takes the lock and keeps it until its stdin closes or it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    return holder


def test_second_prepare_on_the_same_out_stops_with_one_line(tmp_path, videos, capsys):
    out = tmp_path / "out"
    holder = hold_lock(out / LOCK_NAME)
    try:
        assert main(["prepare", "folder", str(videos), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"error: --out {out} is being written by another `stadapt prepare` "
                                    f"(PID {holder.pid} on {os.uname().nodename}); wait for it to finish, "
                                    "or choose another --out"]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of ours written
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert not (out / LOCK_NAME).exists()  # released at exit
    assert main(["prepare", "folder", str(videos), "--out", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()


def test_lock_of_a_killed_prepare_is_taken_over(tmp_path, videos):
    out = tmp_path / "out"
    holder = hold_lock(out / LOCK_NAME)
    holder.kill()  # SIGKILL: no clean-up runs, the lock file stays with a dead PID in it
    holder.wait(10)
    assert (out / LOCK_NAME).read_text().split()[1] == str(holder.pid)
    assert main(["prepare", "folder", str(videos), "--out", str(out)]) == 0
    assert len(PreparedDataset.open(out).samples("train")) == 10


def test_lock_is_exclusive_within_and_across_processes(tmp_path):
    first, second = FileLock(tmp_path / "l"), FileLock(tmp_path / "l")
    assert first.acquire() and not second.acquire() and second.owner() == f"PID {os.getpid()} on {os.uname().nodename}"
    first.release()
    assert second.acquire()
    second.release()
    assert not (tmp_path / "l").exists()


def test_two_prepares_started_together_leave_one_consistent_set(tmp_path, videos):
    """Whichever order the processes get, each either finishes or stops at the lock; the
    result is one complete prepared directory."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "stadapt", "prepare", "folder", str(videos), "--out", str(out), "--workers", "1"]
    runs = [subprocess.Popen([*args, "--seed", str(seed)], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(run.wait(60), run.stderr.read()) for run in runs]
    assert all(code == 0 or (code == 2 and "is being written by another" in err) for code, err in results), results
    assert any(code == 0 for code, _ in results)
    dataset = PreparedDataset.open(out)
    seed = dataset.report["seed"]
    train, val = dataset.samples("train"), dataset.samples("val")
    assert len(train) + len(val) == 12 and not {s.path for s in train} & {s.path for s in val}
    # the manifests are those of the run the report describes
    assert main(["prepare", "folder", str(videos), "--out", str(tmp_path / "again"), "--seed", str(seed)]) == 0
    assert (tmp_path / "again" / "val.csv").read_text() == (out / "val.csv").read_text()
    assert not (out / LOCK_NAME).exists()
