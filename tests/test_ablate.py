"""`stadapt ablate`: axis values, layer-range scaling, GPU placement, a real two-variant sweep and its resume."""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from stadapt.ablate.axes import AXES, Base, backbone_depth, scale_block_range, variants
from stadapt.ablate.runner import Job, run_jobs
from stadapt.cli import main
from stadapt.model.build import build_model, count_parameters
from stadapt.recipe import load_recipe


def tiny_recipe(path: Path, root: Path) -> Path:
    """Two steps of the tiny backbone on 4-frame clips: a variant trains and evaluates in seconds."""
    path.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "root": str(root), "source": "prepared", "num_frames": 4,
                 "sampling": "uniform", "scale": [64, 64], "crop": 64, "test_resize": 64, "mirror": False},
        "model": {"backbone": "stadapt-tiny-vit", "pretrained": "none", "num_classes": 4, "dropout": 0.0,
                  "adapter": {"width": 16}},
        "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "precision": "fp32", "compile": False,
                  "workers": 0, "eval_every": 100, "save_every": 100},
    }))
    return path


def names(axis: str, values: str | None = None, depth: int = 12) -> list[str]:
    return [v.name for v in variants(AXES[axis], values, Base(load_recipe("demo"), depth))[0]]


def test_paper_defaults():
    assert names("width") == ["64", "128", "256", "384", "768"]
    assert names("layers") == ["1-4", "5-8", "9-12", "5-12", "1-12"]
    assert names("position") == ["before_attn", "after_attn", "after_ffn", "before_attn+after_attn"]
    assert names("kernel") == ["1x1x1", "1x3x3", "3x1x1", "3x3x3"]
    assert names("method") == ["full", "full+sa_ta", "full+sa_ts", "partial", "partial+sa_ta", "temporal+sa_ta",
                               "prompt", "attn_pool", "linear_probe", "adapter", "st_adapter"]
    (kernel, *_), _ = variants(AXES["kernel"], None, Base(load_recipe("demo")))
    assert kernel.overrides == ("model.adapter.kernel=[1,1,1]",)


def test_layer_ranges_scale_to_a_four_block_backbone():
    found, note = variants(AXES["layers"], None, Base(load_recipe("demo"), 4))
    assert [v.name for v in found] == ["1", "2-3", "4", "2-4", "1-4"]
    assert [v.overrides for v in found] == [("model.adapter.layers=[0]",), ("model.adapter.layers=[1,2]",),
                                            ("model.adapter.layers=[3]",), ("model.adapter.layers=[1,2,3]",),
                                            ("model.adapter.layers=[0,1,2,3]",)]
    assert "4 blocks" in note and "scaled to 1, 2-3, 4, 2-4, 1-4" in note
    assert variants(AXES["layers"], None, Base(load_recipe("demo"), 12))[1] is None  # the paper's own depth: as written
    assert [scale_block_range(a, b, 24) for a, b in ((1, 4), (5, 8), (9, 12), (5, 12))] == [
        (1, 8), (9, 16), (17, 24), (9, 24)]
    assert names("layers", depth=1) == ["1"]  # coinciding ranges are kept once
    # Values a user gives are blocks of the backbone itself, not scaled.
    assert names("layers", "1-2, 4", depth=4) == ["1-2", "4"]
    assert backbone_depth(load_recipe("demo")) == 4


@pytest.mark.parametrize("axis, values, message", [
    ("width", "64,abc", "'abc' is not a valid width value (a width is a positive integer)"),
    ("width", "64,64", "64 given twice"),
    ("kernel", "2x1x1", "'2x1x1' is not a valid kernel value (a kernel is kTxkHxkW with odd sizes"),
    ("kernel", "3x1", "is not a valid kernel value"),
    ("position", "before_ffn", "'before_ffn' is not a valid position value"),
    ("method", "lora", "'lora' is not a valid method value (a method is one of st_adapter"),
    ("layers", "9-12", "'9-12' is not a valid layers value (the backbone has blocks 1-4)"),
    ("layers", "3-1", "a block range is FIRST-LAST, 1-based"),
    ("width", ",", "--values is empty"),
])
def test_bad_values_are_one_line_exit_2(axis, values, message, capsys, tmp_path):
    assert main(["ablate", axis, "--recipe", "demo", "--values", values, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_recipe_must_fit_the_axis(capsys):
    assert main(["ablate", "kernel", "--recipe", "demo", "--set", "model.method=adapter"]) == 2
    assert "use --set model.method=st_adapter" in capsys.readouterr().err
    assert main(["ablate", "depth", "--recipe", "demo"]) == 2
    assert "unknown ablation axis 'depth'" in capsys.readouterr().err


def test_variants_take_one_gpu_each_and_queue_for_a_free_one(tmp_path):
    """Three jobs on two GPU slots: the first two run together, the third waits for a free GPU."""
    script = ("import os, time; print('gpu', os.environ['CUDA_VISIBLE_DEVICES'], 'start', time.time()); "
              "time.sleep(0.6); print('end', time.time())")
    jobs = [Job(f"v{i}", [sys.executable, "-c", script], tmp_path / f"v{i}.log") for i in range(3)]
    ends = []
    assert run_jobs(jobs, ["3", "5"], on_start=lambda job: None,
                    on_end=lambda job, code, s: ends.append((job.name, code)), poll_s=0.05) is None
    logs = {job.name: (tmp_path / f"{job.name}.log").read_text().split() for job in jobs}
    gpu = {name: words[words.index("gpu") + 1] for name, words in logs.items()}
    start = {name: float(words[words.index("start") + 1]) for name, words in logs.items()}
    end = {name: float(words[words.index("end") + 1]) for name, words in logs.items()}
    assert {gpu["v0"], gpu["v1"]} == {"3", "5"}
    assert start["v1"] < end["v0"] and start["v0"] < end["v1"]  # side by side
    assert start["v2"] >= min(end["v0"], end["v1"])  # queued
    assert sorted(code for _, code in ends) == [0, 0, 0]


def test_a_signal_is_passed_to_running_variants_and_stops_the_queue(tmp_path):
    script = ("import signal, sys, time; "
              "signal.signal(signal.SIGTERM, lambda *a: (print('saved'), sys.exit(143))); time.sleep(30)")
    jobs = [Job(f"v{i}", [sys.executable, "-c", script], tmp_path / f"v{i}.log") for i in range(2)]
    ended = []
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        stopped_by = run_jobs(jobs, [None], on_start=lambda job: None,
                              on_end=lambda job, code, s: ended.append((job.name, code)), poll_s=0.05)
    finally:
        timer.cancel()
    assert stopped_by == signal.SIGTERM
    assert ended == [("v0", 143)] and "saved" in (tmp_path / "v0.log").read_text()
    assert not (tmp_path / "v1.log").exists()  # never started


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_sweep_writes_reports_and_a_rerun_trains_only_what_is_missing(prepared_dir, tmp_path, capsys):
    recipe = tiny_recipe(tmp_path / "tiny.yaml", prepared_dir)
    out = tmp_path / "sweep"
    argv = ["ablate", "width", "--recipe", str(recipe), "--values", "8,16", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "ablate width" in stdout and "trained now" in stdout

    rows = read_csv(out / "ablate-width.csv")
    assert [r["variant"] for r in rows] == ["8", "16"]
    for row in rows:
        model = build_model(load_recipe(recipe, [f"model.adapter.width={row['variant']}"]))
        assert int(row["trainable_params"]) == count_parameters(model)[0]
        assert 0 <= float(row["top1_pct"]) <= float(row["top5_pct"]) <= 100 and float(row["train_seconds"]) > 0
    markdown = (out / "ablate-width.md").read_text()
    assert f"| 8 | {int(rows[0]['trainable_params']):,} |" in markdown and "| 16 |" in markdown
    assert (out / "ablate-width.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # An interrupted variant (here: its evaluation lost) is resumed; the finished one is left alone.
    kept = {p: p.stat().st_mtime_ns for p in (out / "8").rglob("*") if p.is_file()}
    (out / "16" / "eval-val.json").unlink()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 finished earlier, 1 to train" in captured.err
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (out / "16" / "eval-val.json").is_file()
    assert "resumed from" in (out / "16" / "train.log").read_text()
    assert '"attempts": 2' in (out / "16" / "ablate.json").read_text()
    assert [r["variant"] for r in read_csv(out / "ablate-width.csv")] == ["8", "16"]

    # A finished variant is reused only for the same recipe.
    assert main([*argv, "--set", "train.lr=1e-3"]) == 2
    assert "holds a run with train.lr = 0.0005, this ablation asks for 0.001" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Figs. 2b, 2c, Tables 2/3 and 12: steps, data, frames, split, and --methods


def test_new_axes_defaults_and_overrides():
    assert names("steps") == ["0.25", "0.5", "0.75", "1"]
    assert names("data") == ["0.05", "0.1", "0.2", "0.5", "1"]
    assert names("frames") == ["8", "16", "32"]
    assert names("split") == ["1", "2", "3"]
    demo = Base(load_recipe("demo"))  # 200 steps, 20 of warm-up, uniform sampling
    steps = {v.name: v.overrides for v in variants(AXES["steps"], "0.25,1.0", demo)[0]}
    assert steps == {"0.25": ("train.steps=50", "train.warmup_steps=5"),
                     "1": ("train.steps=200", "train.warmup_steps=20")}
    k400 = Base(load_recipe("k400_vitb"))  # dense, 8 frames at stride 16 (Table 8)
    assert [v.overrides for v in variants(AXES["frames"], None, k400)[0]] == [
        ("data.num_frames=8", "data.stride=16"), ("data.num_frames=16", "data.stride=8"),
        ("data.num_frames=32", "data.stride=4")]
    ssv2 = Base(load_recipe("ssv2_vitb"))
    assert [v.overrides for v in variants(AXES["frames"], "16", ssv2)[0]] == [("data.num_frames=16",)]
    assert variants(AXES["data"], "0.25", demo)[0][0].overrides == ("data.train_fraction=0.25",)
    assert variants(AXES["split"], "2", k400)[0][0].overrides == ("data.root=data/k400/split2",)


@pytest.mark.parametrize("argv, message", [
    (["steps", "--values", "0,1"], "'0' is not a valid steps value (a training budget is a fraction in (0, 1]"),
    (["data", "--values", "1.5"], "'1.5' is not a valid data value (a share of the training split is a fraction"),
    (["frames", "--values", "8,x"], "'x' is not a valid frames value"),
    (["split", "--values", "4"], "'4' is not a valid split value (a split is one of 1, 2, 3)"),
    (["data", "--methods", "st_adapter,lora"], "--methods st_adapter,lora: 'lora' is not a valid method value"),
    (["data", "--methods", "full,full"], "--methods full,full: full given twice"),
    (["method", "--methods", "full"], "give the methods with --values, not --methods"),
    (["kernel", "--methods", "st_adapter,full"], "model.method is full: use --set model.method=st_adapter"),
    (["split"], "data/synthetic/split1 (data.root/split1), which is not a prepared directory: run `stadapt "
                "prepare synthetic ROOT --split all --out data/synthetic`"),
])
def test_new_axes_bad_values_are_one_line_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["ablate", *argv, "--recipe", "demo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_data_fraction_is_a_nested_class_stratified_subset():
    from stadapt.data.dataset import stratified_subset
    from stadapt.data.manifest import Sample

    samples = [Sample(Path(f"{label}/{i}.mp4"), {"label": label}) for label in range(3) for i in range(10 + 10 * label)]
    half = stratified_subset(samples, 0.5, seed=0)
    tenth = stratified_subset(samples, 0.1, seed=0)
    assert [sum(s.labels["label"] == c for s in half) for c in range(3)] == [5, 10, 15]
    assert [sum(s.labels["label"] == c for s in tenth) for c in range(3)] == [1, 2, 3]
    quarter = stratified_subset(samples, 0.25, 0)
    assert [sum(s.labels["label"] == c for s in quarter) for c in range(3)] == [3, 5, 8]  # half up
    assert {s.path for s in tenth} < {s.path for s in half}  # nested
    assert [s.path for s in half] == [s.path for s in samples if s in half]  # manifest order kept
    assert stratified_subset(samples, 0.5, seed=0) == half and stratified_subset(samples, 0.5, seed=1) != half
    assert [sum(s.labels["label"] == c for s in stratified_subset(samples, 0.01, 0)) for c in range(3)] == [1, 1, 1]
    assert stratified_subset(samples, 1.0, seed=0) == samples


def test_data_sweep_with_two_methods(prepared_dir, tmp_path, capsys):
    """--methods: one run per (method, value), one column per method, the subset seen in training."""
    recipe = tiny_recipe(tmp_path / "tiny.yaml", prepared_dir)
    out = tmp_path / "sweep"
    assert main(["ablate", "data", "--recipe", str(recipe), "--values", "0.5", "--methods", "st_adapter,linear_probe",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "st_adapter top-1 %" in stdout and "linear_probe top-1 %" in stdout
    rows = read_csv(out / "ablate-data.csv")
    assert [(r["method"], r["variant"], r["train_videos"]) for r in rows] == [
        ("st_adapter", "0.5", "8"), ("linear_probe", "0.5", "8")]  # 2 of each class's 3 training videos
    for method in ("st_adapter", "linear_probe"):
        run = out / method / "0.5"
        assert "8 train / 4 val videos" in (run / "train.log").read_text()
        assert yaml.safe_load((run / "recipe.yaml").read_text())["model"]["method"] == method
    assert int(rows[0]["trainable_params"]) > int(rows[1]["trainable_params"])
    markdown = (out / "ablate-data.md").read_text()
    assert "| data | train videos | st_adapter top-1 (%) | st_adapter top-5 (%) | linear_probe top-1 (%) |" in markdown
    assert f"| 0.5 | 8 | {rows[0]['top1_pct']} | {rows[0]['top5_pct']} | {rows[1]['top1_pct']} |" in markdown
    assert (out / "ablate-data.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frames_sweep_reports_gflops_per_view_and_views(prepared_dir, tmp_path, capsys):
    from stadapt.bench.model import model_cost

    recipe = tiny_recipe(tmp_path / "tiny.yaml", prepared_dir)
    out = tmp_path / "sweep"
    assert main(["ablate", "frames", "--recipe", str(recipe), "--values", "2,4", "--set", "data.test_views.temporal=2",
                 "--out", str(out)]) == 0
    assert "GFLOPs × views" in capsys.readouterr().out
    rows = read_csv(out / "ablate-frames.csv")
    assert [(r["variant"], r["views"]) for r in rows] == [("2", "2"), ("4", "2")]
    for row in rows:
        expected = load_recipe(recipe, ["data.test_views.temporal=2", f"data.num_frames={row['variant']}"])
        assert float(row["gflops_per_view"]) == model_cost(build_model(expected), expected, torch.device("cpu"))[
            "gflops_per_view"]
    assert float(rows[1]["gflops_per_view"]) > 1.9 * float(rows[0]["gflops_per_view"])
    assert f"| 4 | {float(rows[1]['gflops_per_view']):,.4g} × 2 |" in (out / "ablate-frames.md").read_text()


def test_split_sweep_from_official_lists_to_the_mean(tmp_path, capsys):
    """prepare ucf101 --split all on real videos, then ablate split: each split trained, then their mean."""
    from stadapt.data.synthetic import generate_synthetic

    root = tmp_path / "ucf"
    videos = generate_synthetic(tmp_path / "gen", classes=4, videos_per_class=3, frames=16, size=(80, 64))
    classes = sorted({name for _, name in videos})
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode())
    groups: dict[str, list[str]] = {}
    for path, name in videos:
        rel = f"{name}/v_{name}_g{len(groups.setdefault(name, [])) + 1:02d}_c01.mp4"
        groups[name].append(rel)
        (root / "UCF-101" / rel).parent.mkdir(parents=True, exist_ok=True)
        path.rename(root / "UCF-101" / rel)
    for n in (1, 2, 3):  # split N tests on group N, as the official lists do
        train = [f"{rel} {classes.index(c) + 1}" for c in classes for g, rel in enumerate(groups[c], 1) if g != n]
        (lists / f"trainlist0{n}.txt").write_bytes("".join(f"{line}\r\n" for line in train).encode())
        (lists / f"testlist0{n}.txt").write_bytes("".join(f"{groups[c][n - 1]}\r\n" for c in classes).encode())
    data = tmp_path / "data" / "ucf101"
    assert main(["prepare", "ucf101", str(root), "--split", "all", "--out", str(data), "--workers", "1"]) == 0
    recipe = tiny_recipe(tmp_path / "tiny.yaml", data)
    out = tmp_path / "sweep"
    assert main(["ablate", "split", "--recipe", str(recipe), "--values", "1,2", "--set", "data.source=raw",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    rows = read_csv(out / "ablate-split.csv")
    assert [r["variant"] for r in rows] == ["1", "2", "mean"]
    assert float(rows[2]["top1_pct"]) == pytest.approx((float(rows[0]["top1_pct"]) + float(rows[1]["top1_pct"])) / 2,
                                                       abs=0.01)
    assert yaml.safe_load((out / "2" / "recipe.yaml").read_text())["data"]["root"] == str(data / "split2")
    assert (out / "ablate-split.md").read_text().strip().splitlines()[-1].startswith("| mean | - |")
