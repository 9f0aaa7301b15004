"""The engine on CPU with tiny real videos: resume, signals, locking, DDP equivalence, eval, predict."""

import itertools
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stadapt.cli import main
from stadapt.data import VIDEO_SUFFIXES
from stadapt.data.encode import write_video
from stadapt.data.indexers import IndexOptions
from stadapt.data.manifest import read_manifest, write_classes, write_manifest, write_report
from stadapt.data.prepare import PrepareOptions, prepare
from stadapt.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from stadapt.engine import train as train_module
from stadapt.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from stadapt.engine.metrics import score, topk_hits
from stadapt.engine.rundir import LOCK_FILE
from stadapt.engine.schedule import lr_factor, param_groups
from stadapt.engine.stream import DevicePrefetcher
from stadapt.engine.train import TrainingDiverged, train
from stadapt.errors import CheckpointError, DataError
from stadapt.fileio import FileLock
from stadapt.model.build import build_model
from stadapt.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """4 classes × 4 videos (8 frames, 64×48, MP4/WebM/AVI); val holds 7 videos and one broken file."""
    root = tmp_path_factory.mktemp("data")
    videos = root / "videos"
    pairs = generate_synthetic(videos, classes=CLASSES, videos_per_class=4, frames=8, size=(64, 48))
    rows = {"train": [], "val": []}
    for i, (path, name) in enumerate(pairs):
        rows["val" if i % 2 else "train"].append({"path": str(path.relative_to(videos)),
                                                  "label": SYNTHETIC_CLASSES.index(name), "num_frames": 8})
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    rows["val"] = rows["val"][:-1] + [{"path": "broken.mp4", "label": 0, "num_frames": 8}]
    write_classes(root, SYNTHETIC_CLASSES[:CLASSES])
    for split, split_rows in rows.items():
        write_manifest(root / f"{split}.csv", split_rows, ["path", "label", "num_frames"])
    write_report(root, {"videos_root": str(videos)})
    return root


@pytest.fixture(scope="module")
def recipe_file(data_root, tmp_path_factory) -> Path:
    recipe = {
        "data": {"dataset": "synthetic", "root": str(data_root), "num_frames": 8, "sampling": "uniform",
                 "scale": [64, 72], "crop": 64, "test_resize": 64, "mirror": True,
                 "test_views": {"temporal": 1, "spatial": 1}},
        "model": {"backbone": "stadapt-tiny-vit", "pretrained": "none", "method": "st_adapter",
                  "adapter": {"width": 16}, "num_classes": CLASSES, "dropout": 0.2},
        "train": {"steps": 6, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "precision": "fp32",
                  "workers": 0, "eval_every": 100, "save_every": 100, "log_every": 1},
    }
    path = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained_run(recipe_file, tmp_path_factory) -> Path:
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("work"))
    try:
        result = train(str(recipe_file), ["train.steps=3"], out="runs/trained")
        return result.run_dir.absolute()
    finally:
        os.chdir(cwd)


def stop_after(monkeypatch, step: int) -> None:
    """Deliver a real SIGTERM to this process while step `step` is running."""
    original = train_module.Trainer._step

    def step_then_signal(self, batches):
        if self.pos.step == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batches)

    monkeypatch.setattr(train_module.Trainer, "_step", step_then_signal)


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "stadapt", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def untimed(report: Path) -> dict:
    """An eval report without its throughput, which differs from run to run."""
    result = json.loads(report.read_text())
    result.pop("clips_per_s")
    return result


# -- resume -------------------------------------------------------------------------------


def test_stopped_and_resumed_run_is_bitwise_the_uninterrupted_one(recipe_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = train(str(recipe_file), out="runs/full")
    assert full.completed and full.exit_code == 0

    with monkeypatch.context() as patch:
        stop_after(patch, 3)
        stopped = train(str(recipe_file), out="runs/split")
    assert not stopped.completed and stopped.step == 3 and stopped.exit_code == 128 + signal.SIGTERM
    assert not (tmp_path / "runs/split/adapter.safetensors").exists()
    resumed = train(str(recipe_file), out="runs/split", resume=True)
    assert resumed.completed and resumed.step == 6

    a = load_checkpoint(tmp_path / "runs/full" / CHECKPOINT_FILE)
    b = load_checkpoint(tmp_path / "runs/split" / CHECKPOINT_FILE)
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[field], b["optimizer"]["state"][key][field])
    assert a["position"] == b["position"] and a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    steps = [e["step"] for e in map(json.loads, (tmp_path / "runs/split/metrics.jsonl").read_text().splitlines())
             if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing logged twice across the restart
    assert untimed(tmp_path / "runs/split/eval-val.json") == untimed(tmp_path / "runs/full/eval-val.json")
    assert os.readlink(tmp_path / "runs/latest") == "split"


def test_sigterm_to_a_training_process_leaves_a_checkpoint_that_resumes(recipe_file, tmp_path):
    args = ["train", str(recipe_file), "--set", "train.steps=30", "--set", "train.workers=1", "--out", "run"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stadapt", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in out and "--resume" in out
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert 2 <= state["step"] < 30
    assert not (tmp_path / "run" / LOCK_FILE).exists()

    done = run_cli(*args, "--resume", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"resumed from run/{CHECKPOINT_FILE} at step {state['step']}" in done.stdout
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["step"] == 30
    assert (tmp_path / "run" / "adapter.safetensors").exists() and (tmp_path / "run" / "curves.png").exists()


# -- run directory and checkpoint safety ---------------------------------------------------------


def test_a_second_training_on_the_same_run_directory_is_refused(recipe_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    holder = FileLock(run / LOCK_FILE)
    assert holder.acquire()  # as a live `stadapt train` would
    try:
        assert main(["train", str(recipe_file), "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert "in use by another `stadapt train`" in err and f"PID {os.getpid()}" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        holder.release()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(f"{socket.gethostname()} {dead.pid}\n")  # left by a killed run
    with pytest.raises(SystemExit):  # the lock is taken over; training then starts (stopped here)
        with monkeypatch.context() as patch:
            patch.setattr(train_module.Trainer, "run", lambda self: sys.exit(0))
            train(str(recipe_file), out=str(run))


def tree(root: Path) -> dict[str, object]:
    """Every path under `root` with its bytes (files) or target (symbolic links)."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            found[key] = os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return found


def test_a_failed_start_changes_nothing_on_disk(trained_run, recipe_file, data_root, tmp_path, monkeypatch, capsys):
    """A good run and runs/latest exist; starts that fail before their first step leave them be."""
    work = tmp_path / "work"
    shutil.copytree(trained_run.parent.parent, work, symlinks=True)
    monkeypatch.chdir(work)
    assert Path("runs/latest").resolve() == (work / "runs/trained").resolve()
    (work / "kept").mkdir()
    (work / "kept" / "notes.txt").write_text("mine")
    no_classes = tmp_path / "no-classes"
    no_classes.mkdir()
    (no_classes / "report.json").write_text(json.dumps({"videos_root": str(data_root / "videos")}))
    bad_manifest = tmp_path / "bad-manifest"
    shutil.copytree(data_root, bad_manifest, ignore=shutil.ignore_patterns("videos"))
    (bad_manifest / "train.csv").write_text("path,label,num_frames\nx.mp4,two,8\n")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(os.urandom(2000))
    tiny = str(recipe_file)
    cases = {  # what fails → (recipe, overrides, what the one line says)
        "no data prepared": (str(REPO / "recipes/k400_vitb.yaml"), [], "data.root = 'data/k400' is not a directory"),
        "missing data root": (tiny, [f"data.root={tmp_path / 'nowhere'}"], "is not a directory"),
        "no classes.txt": (tiny, [f"data.root={no_classes}"], "classes.txt: missing"),
        "unreadable manifest": (tiny, [f"data.root={bad_manifest}"], "train.csv:2: label is not an integer"),
        "class count": (tiny, ["model.num_classes=7"], "model.num_classes = 7, but"),
        "bad pretrained file": (tiny, [f"model.pretrained={weights}"], f"cannot load checkpoint {weights}"),
        "missing init_from": (tiny, [f"model.init_from={tmp_path / 'none.safetensors'}"], "none.safetensors"),
    }
    before = tree(work)
    for case, (recipe, overrides, message) in cases.items():
        for out in ([], ["--out", "X"], ["--out", "kept"]):
            args = ["train", recipe, *[a for s in overrides for a in ("--set", s)], *out]
            assert main(args) == 2, (case, out)
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, (case, out, err)
            assert tree(work) == before, (case, out)
    assert main(["train", str(recipe_file), "--out", "kept/notes.txt"]) == 2
    assert "--out kept/notes.txt is a file, not a directory" in capsys.readouterr().err
    assert tree(work) == before
    video = sorted((data_root / "videos").glob("*/*.mp4"))[0]
    assert main(["predict", str(video), "--json"]) == 0
    assert "predictions" in json.loads(capsys.readouterr().out)[0]


def test_an_existing_run_needs_resume(trained_run, recipe_file, capsys):
    assert main(["train", str(recipe_file), "--out", str(trained_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_refuses_a_different_recipe(trained_run, recipe_file, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    assert main(["train", str(recipe_file), "--set", "train.lr=1", "--out", str(run), "--resume"]) == 2
    assert "train.lr differs" in capsys.readouterr().err


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_checkpoint_loader_refuses_pickled_code_and_damaged_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "stadapt-checkpoint/1", "step": 1, "payload": _Exploit()}, evil, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused without running them"):
        load_checkpoint(evil)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"payload": _Exploit()}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)
    assert not (tmp_path / "pwned-by-pickle").exists()

    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 3, "weights": torch.ones(1000)})
    assert load_checkpoint(good)["step"] == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a stadapt checkpoint"):
        load_checkpoint(foreign)


# -- robustness ---------------------------------------------------------------------------


def test_non_finite_losses_skip_updates_then_stop(recipe_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "classification_loss",
                        lambda logits, labels: logits["label"].sum() * float("nan"))
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row"):
        train(str(recipe_file), ["train.max_bad_steps=3"], out="run")
    events = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "nonfinite_loss"] == [1, 2, 3]


def test_too_many_unreadable_training_videos_stop_the_run(data_root, recipe_file, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("videos"))
    videos = data_root / "videos"
    rows = [{"path": str(s.path.relative_to(videos)), "label": s.labels["label"]} for s in
            read_manifest(data_root / "train.csv", videos)]
    rows += [{"path": "broken.mp4", "label": 1}] * 2
    write_manifest(root / "train.csv", rows, ["path", "label"])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="could not be read in epoch 0, more than data.max_bad_fraction"):
        train(str(recipe_file), [f"data.root={root}", "data.max_bad_fraction=0.1", "train.batch_size=10"], out="run")


def test_training_workers_stop_when_the_loop_ends(recipe_file, tmp_path, monkeypatch):
    """The final evaluation gets the CPUs: no training loader worker outlives the last step."""
    earlier = set(multiprocessing.active_children())  # children of other tests, if any
    alive_at_final_eval = []
    evaluate = train_module.evaluate_model

    def record_then_evaluate(*args, **kwargs):
        if "run_dir" in kwargs:  # the final evaluation
            alive_at_final_eval.extend(set(multiprocessing.active_children()) - earlier)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_model", record_then_evaluate)
    monkeypatch.chdir(tmp_path)
    workers_seen = []
    stream_iter = train_module.DevicePrefetcher.__next__

    def next_and_count(self):
        workers_seen.append(len(set(multiprocessing.active_children()) - earlier))
        return stream_iter(self)

    monkeypatch.setattr(train_module.DevicePrefetcher, "__next__", next_and_count)
    train(str(recipe_file), ["train.workers=2", "train.steps=3"], out="run")
    assert max(workers_seen) == 2  # the loader did run its two workers
    assert alive_at_final_eval == []


# -- distributed ----------------------------------------------------------------------------


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "STADAPT_DIST_TIMEOUT_S": "120"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "stadapt", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_train_and_evaluate_like_one(recipe_file, tmp_path, monkeypatch):
    # Two adapters per block, as the SSv2 recipes: the last block's second one never reaches
    # the logits (the head reads the CLS token), which DDP must tolerate.
    settings = ["model.dropout=0", "train.steps=4", "model.adapter.positions=[before_attn,after_attn]"]
    sets = [a for s in settings for a in ("--set", s)]
    two = torchrun("train", str(recipe_file), *sets, "--out", "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("done:") == 1  # rank 0 alone reports
    monkeypatch.chdir(tmp_path)
    train(str(recipe_file), settings, out="one")
    train(str(recipe_file), settings + ["train.device_batch_size=2"], out="accumulated")
    a = load_checkpoint(tmp_path / "one" / CHECKPOINT_FILE)["model"]
    for other in ("two", "accumulated"):
        b = load_checkpoint(tmp_path / other / CHECKPOINT_FILE)["model"]
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=f"{other}: {name}")

    # bench run: the two-process run's throughput per process against the one-process run's
    assert main(["bench", "run", "one", "--skip", "1", "--json", "--out", "one.json"]) == 0
    assert main(["bench", "run", "two", "--skip", "1", "--baseline", "one.json", "--out", "two.json"]) == 0
    single, double = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert (single["world_size"], double["world_size"]) == (1, 2) and double["windows_used"] == 3
    logged = [json.loads(line)["clips_per_s"] for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()
              if "clips_per_s" in line]
    assert double["clips_per_s"] == round(sorted(logged[1:])[1], 4)  # the median of the windows after the first
    assert double["clips_per_s_per_process"] == pytest.approx(double["clips_per_s"] / 2, abs=1e-4)
    assert double["scaling_efficiency"] == pytest.approx(double["clips_per_s_per_process"] / single["clips_per_s"],
                                                         abs=1e-4)
    assert main(["bench", "run", "two", "--baseline", "two/recipe.yaml"]) == 2  # not a benchmark result

    evaluated = torchrun("eval", "one", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    by_two = untimed(tmp_path / "one/eval-val.json")
    assert main(["eval", "one"]) == 0
    by_one = untimed(tmp_path / "one/eval-val.json")
    assert by_two == by_one
    assert by_one["num_videos"] == 7 and by_one["unreadable"]["count"] == 1
    assert by_one["unreadable"]["names"][0].endswith("broken.mp4")


# -- eval and predict -----------------------------------------------------------------------


def test_eval_writes_its_reports_with_other_views(trained_run, capsys):
    assert main(["eval", str(trained_run), "--set", "data.test_views.temporal=2",
                 "--set", "data.test_views.spatial=3"]) == 0
    report = json.loads((trained_run / "eval-val.json").read_text())
    assert report["views"] == {"temporal": 2, "spatial": 3} and report["num_frames"] == 8
    assert set(report) >= {"top1", "top5", "mean_class_acc", "num_videos", "unreadable"}
    assert report["decode"] == "cpu"  # no CUDA here: the loader workers decode
    assert report["clips_per_s"] is None or report["clips_per_s"] > 0  # None: one batch, nothing timed
    assert report["top5"] == 1.0  # 4 classes: top-5 is capped at top-4
    matrix = (trained_run / "confusion-val.csv").read_text().splitlines()
    assert matrix[0].split(",")[1:] == SYNTHETIC_CLASSES[:CLASSES] and len(matrix) == CLASSES + 1
    assert (trained_run / "confusion-val.png").stat().st_size > 0
    assert "mean class accuracy" in capsys.readouterr().out
    assert main(["eval", str(trained_run), "--set", "model.method=full"]) == 2


def test_predict_answers_each_video_and_reports_broken_ones(trained_run, data_root, capsys, tmp_path, monkeypatch):
    videos = data_root / "videos"
    files = [sorted(videos.glob(f"*/*{suffix}"))[0] for suffix in (".mp4", ".webm", ".avi")]
    broken = videos / "broken.mp4"
    args = ["predict", *map(str, files), str(broken), "--model", str(trained_run), "--top-k", "3", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["video"] for r in results] == [*map(str, files), str(broken)]
    for entry in results[:3]:
        scores = [p["score"] for p in entry["predictions"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        assert all(p["label"] == SYNTHETIC_CLASSES[p["index"]] for p in entry["predictions"])
    assert "broken.mp4" in results[3]["error"] and "predictions" not in results[3]

    assert main(["predict", str(broken), "--model", str(trained_run), "--json"]) == 1
    assert "error" in json.loads(capsys.readouterr().out)[0]
    assert main(["predict", str(files[0]), "--model", str(trained_run), "--views", "2x3"]) == 0
    assert files[0].name in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)  # no runs/latest here
    assert main(["predict", str(files[0])]) == 2
    assert "runs/latest does not exist" in capsys.readouterr().err


def test_predict_answers_every_video_that_prepare_folder_indexes(trained_run, tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    root = tmp_path / "mine"
    written = {write_video(root / ("a", "b")[i % 2] / f"clip{suffix}", frames).relative_to(root).as_posix()
               for i, suffix in enumerate(sorted(VIDEO_SUFFIXES))}
    (root / "a" / "notes.txt").write_text("not a video")
    (root / "a" / "._clip.mp4").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    report = prepare(PrepareOptions("folder", root, tmp_path / "prepared", index=IndexOptions(val_fraction=0.0)))
    assert report["splits"]["train"]["unreadable"] == 0
    indexed = {row.split(",")[0] for row in (tmp_path / "prepared" / "train.csv").read_text().splitlines()[1:]}
    assert indexed == written and len(written) == len(VIDEO_SUFFIXES)

    assert main(["predict", str(root), "--model", str(trained_run), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r.get("error") for r in results] == [None] * len(written)
    assert {Path(r["video"]).relative_to(root).as_posix() for r in results} == written


# -- pieces -----------------------------------------------------------------------------------


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 10, 110) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[10] == 1.0
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 1e-3


def test_parameter_groups_scale_and_exempt_what_they_should():
    recipe = load_recipe("demo", ["model.method=full", "train.backbone_lr_scale=0.01"])
    model = build_model(recipe)
    groups = {g["name"]: g for g in param_groups(model, recipe.train)}
    lr, wd = recipe.train.lr, recipe.train.weight_decay
    assert groups["backbone"]["lr"] == pytest.approx(0.01 * lr)
    assert groups["backbone"]["weight_decay"] == pytest.approx(0.01 * wd)
    assert groups["new"]["lr"] == lr and groups["new"]["weight_decay"] == wd
    assert groups["backbone-no-decay"]["weight_decay"] == 0 and groups["new-no-decay"]["weight_decay"] == 0
    no_decay = {id(p) for p in groups["backbone-no-decay"]["params"]}
    named = dict(model.named_parameters())
    for name in ("visual.positional_embedding", "visual.class_embedding", "visual.ln_post.weight", "visual.conv1.bias"
                 if "visual.conv1.bias" in named else "visual.ln_pre.bias"):
        assert id(named[name]) in no_decay, name
    assert id(named["visual.conv1.weight"]) not in no_decay

    recipe = load_recipe("demo", ["train.adapter_lr_scale=0.1"])
    groups = {g["name"]: g for g in param_groups(build_model(recipe), recipe.train)}
    assert groups["adapter"]["lr"] == pytest.approx(0.1 * lr) and "backbone" not in groups
    assert groups["adapter"]["weight_decay"] == pytest.approx(0.1 * wd)


def test_scores_cap_top_k_and_join_heads_into_actions():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_hits(probs, torch.tensor([0, 0]), 5).all()
    verb = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    noun = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]])
    result = score({"verb": verb, "noun": noun}, {"verb": torch.tensor([0, 1, 1]), "noun": torch.tensor([2, 0, 2])})
    assert result["heads"]["verb"]["top1"] == pytest.approx(2 / 3) and result["heads"]["noun"]["top1"] == 1.0
    assert result["top1"] == pytest.approx(2 / 3)  # both right: videos 0 and 1
    assert result["top5"] == 1.0  # (1, 2) is among video 2's five most probable pairs


def _batches(count: int):
    for i in range(count):
        yield {"clip": torch.full((2, 3, 4, 8, 8), i, dtype=torch.uint8), "epoch": torch.tensor([0, 0]),
               "label": {"verb": torch.tensor([i, i]), "noun": torch.tensor([-i, -i])}, "skipped": torch.tensor([0, 0])}


def test_prefetching_keeps_the_loader_order_and_takes_each_batch_once():
    batches = DevicePrefetcher(_batches(4), torch.device("cpu"))
    first = next(batches)
    batches.prefetch()
    batches.prefetch()  # a second call while one batch waits takes nothing more
    rest = list(itertools.islice(batches, 3))
    assert [int(b["clip"].flatten()[0]) for b in [first, *rest]] == [0, 1, 2, 3]
    assert [int(b["label"]["noun"][0]) for b in [first, *rest]] == [0, -1, -2, -3]
    batches.prefetch()  # nothing left: no error until the next batch is asked for
    with pytest.raises(StopIteration):
        next(batches)
