"""Deploy and share, on CPU with real videos and real runs: export, timelines, collections,
protocol cards and fingerprints, compare, TensorBoard."""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

import stadapt
from stadapt.cli import main
from stadapt.data.decode import read_frames
from stadapt.data.encode import write_video
from stadapt.data.manifest import write_classes, write_manifest, write_report
from stadapt.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from stadapt.data.transforms import EvalTransform
from stadapt.engine import predict as predict_module
from stadapt.engine.export import ExportedClassifier, export_onnx
from stadapt.engine.predict import Predictor, Timeline, expand_inputs, timeline_windows
from stadapt.engine.train import train
from stadapt.model.artifact import load_model
from stadapt.recipe import recipe_from_dict

CLASSES = 4
FRAMES = 8
FPS = 25


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """4 classes × 4 videos of 8 frames at 25 fps; val holds every second one."""
    root = tmp_path_factory.mktemp("data")
    videos = root / "videos"
    pairs = generate_synthetic(videos, classes=CLASSES, videos_per_class=4, frames=FRAMES, size=(64, 48))
    rows = {"train": [], "val": []}
    for i, (path, name) in enumerate(pairs):
        rows["val" if i % 2 else "train"].append({"path": str(path.relative_to(videos)), "fps": FPS,
                                                  "label": SYNTHETIC_CLASSES.index(name), "num_frames": FRAMES})
    write_classes(root, SYNTHETIC_CLASSES[:CLASSES])
    for split, split_rows in rows.items():
        write_manifest(root / f"{split}.csv", split_rows, ["path", "label", "num_frames", "fps"])
    write_report(root, {"videos_root": str(videos)})
    return root


def recipe_dict(data_root: Path) -> dict:
    return {
        "data": {"dataset": "synthetic", "root": str(data_root), "num_frames": FRAMES, "sampling": "uniform",
                 "scale": [64, 72], "crop": 64, "test_resize": 64, "mirror": False,
                 "test_views": {"temporal": 1, "spatial": 1}},
        "model": {"backbone": "stadapt-tiny-vit", "pretrained": "none", "method": "st_adapter",
                  "adapter": {"width": 16}, "num_classes": CLASSES, "dropout": 0.0},
        "train": {"steps": 3, "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "precision": "fp32",
                  "workers": 0, "eval_every": 100, "save_every": 100, "log_every": 1},
    }


@pytest.fixture(scope="module")
def recipe_file(data_root, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(data_root)))
    return path


@pytest.fixture(scope="module")
def trained_run(recipe_file, tmp_path_factory) -> Path:
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("work"))
    try:
        return train(str(recipe_file), out="runs/trained").run_dir.absolute()
    finally:
        os.chdir(cwd)


def videos_of(data_root: Path, split: str = "val") -> list[Path]:
    lines = (data_root / f"{split}.csv").read_text().splitlines()[1:]
    return [data_root / "videos" / line.split(",")[0] for line in lines]


def random_adapter_run(run_dir: Path, recipe: stadapt.Recipe, class_names: dict) -> Path:
    """A run directory holding only adapter.safetensors, with random (not identity) adapters."""
    model = stadapt.build_model(recipe)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    stadapt.save_adapter(model, run_dir / "adapter.safetensors", recipe=recipe, class_names=class_names)
    return run_dir


# -- export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_exported_files_compute_the_pytorch_logits(trained_run, impl, tmp_path, capsys):
    trained = load_model(trained_run)
    raw = trained.recipe.to_dict()
    raw["model"]["impl"] = impl
    run = random_adapter_run(tmp_path / "run", recipe_from_dict(raw), trained.class_names)
    model = load_model(run).eval()
    x = torch.randn(3, 3, FRAMES, 64, 64)  # another batch size than the one traced
    with torch.no_grad():
        expected = model(x)["label"]

    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    session = ort.InferenceSession(str(run / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["video"] and [o.name for o in session.get_outputs()] == ["logits"]
    onnx_logits = torch.from_numpy(session.run(None, {"video": x.numpy()})[0])
    assert torch.allclose(onnx_logits, expected, atol=1e-4, rtol=0)

    out = tmp_path / "deploy" / "classifier.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    scripted = torch.jit.load(str(out))
    with torch.no_grad():
        assert torch.allclose(scripted(x), expected, atol=1e-4, rtol=0)

    sidecar = json.loads((tmp_path / "deploy" / "classifier.pt.json").read_text())
    assert sidecar["class_names"] == {"label": SYNTHETIC_CLASSES[:CLASSES]}
    assert sidecar["mean"] == list(model.image_mean) and sidecar["std"] == list(model.image_std)
    assert (sidecar["num_frames"], sidecar["crop"], sidecar["sampling"]) == (FRAMES, 64, "uniform")
    assert sidecar["impl"] == impl
    assert sidecar["input"]["shape"] == ["N", 3, FRAMES, 64, 64] and sidecar["outputs"][0]["num_classes"] == CLASSES
    assert sidecar["backbone"] == {"backbone": "stadapt-tiny-vit", "pretrained": "none", "library": "open_clip"}


def test_a_model_with_two_heads_exports_one_output_per_head(trained_run, tmp_path):
    raw = load_model(trained_run).recipe.to_dict()
    raw["model"]["num_classes"] = {"verb": 3, "noun": 5}
    names = {"verb": ["take", "put", "open"], "noun": [f"n{i}" for i in range(5)]}
    run = random_adapter_run(tmp_path / "ek", recipe_from_dict(raw), names)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    model = load_model(run).eval()
    x = torch.randn(2, 3, FRAMES, 64, 64)
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(run / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["verb", "noun"]
    for name, got in zip(["verb", "noun"], session.run(None, {"video": x.numpy()})):
        assert torch.allclose(torch.from_numpy(got), expected[name], atol=1e-4, rtol=0)
    sidecar = json.loads((run / "model.onnx.json").read_text())
    assert sidecar["outputs"] == [{"name": "verb", "head": "verb", "num_classes": 3},
                                  {"name": "noun", "head": "noun", "num_classes": 5}]
    assert sidecar["class_names"] == names


def test_a_k400_sized_model_exports_to_onnx(tmp_path):
    """ViT-B/16 with the K400 recipe's adapters (width 384 in all 12 blocks), random weights.

    2 frames instead of 8 (the recipe's width, depth and 224² crop): at 8 frames one export
    takes over a minute on 2 CPU cores.
    """
    started = time.monotonic()
    recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none", "data.num_frames=2",
                                               "data.test_views.temporal=1"])
    model = stadapt.build_model(recipe).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    model.class_names = {"label": [str(i) for i in range(400)]}
    model.recipe = recipe
    path = tmp_path / "k400.onnx"
    export_onnx(model, path)
    x = torch.randn(1, 3, 2, 224, 224)
    session = ort.InferenceSession(str(path))
    got = torch.from_numpy(session.run(None, {"video": x.numpy()})[0])
    with torch.no_grad():
        expected = ExportedClassifier(model)(x)
    assert got.shape == (1, 400)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    print(f"K400-sized export and check: {time.monotonic() - started:.1f} s", file=sys.stderr)


def test_export_refuses_bad_input_in_one_line(trained_run, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main(["export", str(empty), "--format", "onnx"]) == 2
    assert "adapter.safetensors: no such adapter file" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--format", "tflite"]) == 2
    err = capsys.readouterr().err
    assert "--format 'tflite'" in err and "onnx, torchscript" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(blocker / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the export extra were not installed
    assert main(["export", str(trained_run), "--format", "onnx"]) == 2
    assert "stadapt[export]" in capsys.readouterr().err
    assert not (trained_run / "model.onnx").exists() and not (trained_run / "model.onnx.json").exists()


# -- predict: batching, timelines, collections ------------------------------------------------


def test_batched_predictions_equal_one_video_at_a_time(trained_run, data_root):
    videos = [str(v) for v in videos_of(data_root)]
    predictor = Predictor(trained_run, top_k=CLASSES)
    together = [r.entry for r in predictor.results(expand_inputs(videos))]
    for video, entry in zip(videos, together):
        alone = next(predictor.results(expand_inputs([video]))).entry
        assert [p["label"] for p in alone["predictions"]] == [p["label"] for p in entry["predictions"]]
        assert np.allclose([p["score"] for p in alone["predictions"]], [p["score"] for p in entry["predictions"]],
                           atol=1e-5)


def test_default_window_is_the_span_of_one_clip(trained_run):
    predictor = Predictor(trained_run)
    assert predictor.window_sizes(FPS, Timeline()) == (FRAMES / FPS, FRAMES / FPS / 2)  # uniform: median video
    assert predictor.window_sizes(FPS, Timeline(2.0)) == (2.0, 1.0)
    raw = predictor.recipe.to_dict()
    raw["data"].update(sampling="dense", stride=4)
    predictor.recipe = recipe_from_dict(raw)
    assert predictor.window_sizes(FPS, Timeline(stride_s=0.5)) == (FRAMES * 4 / FPS, 0.5)  # dense: frames × stride


def test_timeline_windows_cover_the_video_without_cutting_one_short():
    assert timeline_windows(5.0, 2.0, 1.0) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    assert timeline_windows(5.5, 2.0, 2.0) == [(0, 2), (2, 4), (3.5, 5.5)]
    assert timeline_windows(1.0, 2.0, 1.0) == [(0.0, 1.0)]


@pytest.fixture(scope="module")
def long_video(data_root, tmp_path_factory) -> Path:
    """Four validation videos of four classes one after the other: 32 frames, 1.28 s."""
    parts = videos_of(data_root)[::2]
    frames = np.concatenate([read_frames(p, range(FRAMES)) for p in parts])
    return write_video(tmp_path_factory.mktemp("long") / "four.mp4", frames, fps=FPS)


def test_timeline_predicts_windows_and_plots_them(trained_run, long_video, tmp_path, capsys):
    assert json.loads((trained_run / "train-data.json").read_text())["median_duration_s"] == FRAMES / FPS
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    out = tmp_path / "plots"
    assert main(["predict", str(long_video), str(broken), "--model", str(trained_run), "--timeline", "--json",
                 "--top-k", "2", "--out", str(out)]) == 0
    entry, bad = json.loads(capsys.readouterr().out)
    # Default window: one uniformly sampled clip spans a median training video (8 frames = 0.32 s).
    spans = [(w["start_s"], w["end_s"]) for w in entry["timeline"]]
    assert spans == [(round(0.16 * i, 3), round(0.16 * i + 0.32, 3)) for i in range(7)]
    assert all(len(w["predictions"]) == 2 for w in entry["timeline"])
    assert "predictions" in entry and "error" in bad
    png = out / "four.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "broken.png").exists()

    # Each window is sampled over its span as the recipe samples a clip: here 8 frames of 8.
    assert main(["predict", str(long_video), "--model", str(trained_run), "--timeline", "--json",
                 "--window-s", "0.32", "--stride-s", "0.32", "--top-k", str(CLASSES)]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert [(w["start_s"], w["end_s"]) for w in entry["timeline"]] == [(0.0, 0.32), (0.32, 0.64), (0.64, 0.96),
                                                                       (0.96, 1.28)]
    model = load_model(trained_run).eval()
    for i, window in enumerate(entry["timeline"]):
        frames = torch.from_numpy(read_frames(long_video, range(FRAMES * i, FRAMES * (i + 1)))).permute(0, 3, 1, 2)
        clip = EvalTransform(model.recipe.data)(frames)
        with torch.no_grad():
            probs = torch.softmax(model(clip)["label"], dim=-1)[0]
        assert np.allclose([p["score"] for p in window["predictions"]],
                           [float(probs[p["index"]]) for p in window["predictions"]], atol=1e-5)
    assert main(["predict", str(long_video), "--model", str(trained_run), "--window-s", "1"]) == 2
    assert "--timeline" in capsys.readouterr().err


def test_a_collection_streams_lines_and_resumes_each_video_exactly_once(trained_run, data_root, tmp_path,
                                                                        monkeypatch, capsys):
    folder = data_root / "videos"
    videos = [v for v, _ in expand_inputs([str(folder)])]
    out = tmp_path / "results.jsonl"
    complete = tmp_path / "complete.jsonl"
    assert main(["predict", str(folder), "--model", str(trained_run), "--out", str(complete)]) == 0
    assert "videos/s" in capsys.readouterr().err

    original = predict_module.Predictor.results

    class Killed(Exception):
        pass

    def killed_after_three(self, entries, timeline=None):
        for i, result in enumerate(original(self, entries, timeline)):
            if i == 3:
                raise Killed
            yield result

    monkeypatch.setattr(predict_module.Predictor, "results", killed_after_three)
    with pytest.raises(Killed):
        main(["predict", str(folder), "--model", str(trained_run), "--out", str(out)])
    monkeypatch.undo()
    lines = out.read_text().splitlines()
    assert [json.loads(line)["video"] for line in lines] == videos[:3]
    with open(out, "a") as fh:
        fh.write('{"video": "torn by a kill')  # a line the killed run did not finish

    assert main(["predict", str(folder), "--model", str(trained_run), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["predict", str(folder), "--model", str(trained_run), "--out", str(out), "--resume"]) == 0
    assert "3 videos were already there" in capsys.readouterr().err
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["video"] for e in resumed] == videos
    expected = [json.loads(line) for line in complete.read_text().splitlines()]
    for got, want in zip(resumed, expected):
        assert [p["label"] for p in got["predictions"]] == [p["label"] for p in want["predictions"]]


# -- protocol cards, fingerprints, compare --------------------------------------------------------


def test_eval_reports_its_protocol_and_the_videos_it_saw(trained_run, data_root, tmp_path, capsys):
    assert main(["eval", str(trained_run), "--set", "data.test_views.spatial=3"]) == 0
    printed = capsys.readouterr().out
    assert "data fingerprint" in printed and "GFLOPs/view" in printed
    report = json.loads((trained_run / "eval-val.json").read_text())
    protocol = report["protocol"]
    assert protocol["views"] == {"temporal": 1, "spatial": 3}
    assert (protocol["num_frames"], protocol["sampling"], protocol["crop"], protocol["test_resize"]) == \
        (FRAMES, "uniform", 64, 64)
    assert protocol["gflops_per_view"] > 0
    assert protocol["gflops_total"] == pytest.approx(3 * protocol["gflops_per_view"])
    fingerprint = report["data_fingerprint"]
    assert fingerprint["num_videos"] == 8 and fingerprint["unreadable"] == 0 and len(fingerprint["sha256"]) == 64

    # The same videos listed in another order, from a copy elsewhere: the same fingerprint.
    copy = tmp_path / "copy"
    shutil.copytree(data_root, copy)
    header, *rows = (copy / "val.csv").read_text().splitlines()
    (copy / "val.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")
    report_json = json.loads((copy / "report.json").read_text())
    write_report(copy, {**report_json, "videos_root": str(copy / "videos")})
    same = tmp_path / "same"
    shutil.copytree(trained_run, same)
    assert main(["eval", str(same), "--set", f"data.root={copy}"]) == 0
    assert json.loads((same / "eval-val.json").read_text())["data_fingerprint"]["sha256"] == fingerprint["sha256"]

    # One video fewer: another fingerprint, and compare says so.
    (copy / "val.csv").write_text("\n".join([header, *rows[:-1]]) + "\n")
    fewer = tmp_path / "fewer"
    shutil.copytree(trained_run, fewer)
    capsys.readouterr()
    assert main(["eval", str(fewer), "--set", f"data.root={copy}"]) == 0
    capsys.readouterr()
    assert main(["compare", str(trained_run), str(same), str(fewer), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not result["same_videos"] and len(result["groups"]) == 2
    row = result["runs"][0]
    assert (row["method"], row["arch"], row["views"]) == ("st_adapter", "sa", "1x3")
    assert row["trainable_params"] == sum(p.numel() for p in load_model(trained_run).parameters() if p.requires_grad)
    assert main(["compare", str(trained_run), str(fewer)]) == 0
    text = capsys.readouterr().out
    assert "NOT comparable" in text and str(fewer) in text
    assert main(["compare", str(trained_run), str(same)]) == 0
    assert "all 2 runs were evaluated on the same videos" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing")]) == 2


# -- TensorBoard --------------------------------------------------------------------------------


def test_tensorboard_events_hold_the_training_metrics(recipe_file, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    train(str(recipe_file), ["train.tensorboard=true"], out="runs/tb")
    board = EventAccumulator(str(tmp_path / "runs/tb/tensorboard"))
    board.Reload()
    metrics = [json.loads(line) for line in (tmp_path / "runs/tb/metrics.jsonl").read_text().splitlines()]
    losses = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    assert [(e.step, e.value) for e in board.Scalars("train/loss")] == [(s, pytest.approx(v)) for s, v in losses]
    assert [e.step for e in board.Scalars("val/top1")] == [3]

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert main(["train", str(recipe_file), "--set", "train.tensorboard=true", "--out", "runs/none"]) == 2
    assert "tensorboard package is not installed" in capsys.readouterr().err
    assert not (tmp_path / "runs/none").exists()
