"""`stadapt explain`: last-block CLS attention maps of a trained run, with and without its adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from stadapt.cli import main
from stadapt.data.decode import count_frames
from stadapt.engine.explain import cls_attention
from stadapt.model.artifact import load_model


def train_run(tmp_path: Path, root: Path, method: str) -> Path:
    """Two steps of the tiny backbone on 4-frame clips; adapters' last layers are non-zero after them."""
    recipe = tmp_path / f"{method}.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "root": str(root), "source": "prepared", "num_frames": 4,
                 "sampling": "uniform", "scale": [64, 64], "crop": 64, "test_resize": 64, "mirror": False},
        "model": {"backbone": "stadapt-tiny-vit", "pretrained": "none", "method": method, "num_classes": 4,
                  "dropout": 0.0, "adapter": {"width": 16}},
        "train": {"steps": 2, "batch_size": 4, "warmup_steps": 0, "lr": 0.05, "precision": "fp32",
                  "compile": False, "workers": 0, "eval_every": 100, "save_every": 100},
    }))
    run = tmp_path / f"run-{method}"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def runs(prepared_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("explain-runs")
    return {method: train_run(tmp, prepared_dir, method) for method in ("st_adapter", "linear_probe")}


def videos_of(prepared_dir: Path) -> list[Path]:
    return sorted((prepared_dir.parent / "videos").rglob("*.mp4"))


def test_maps_per_frame_png_and_bad_inputs(runs, prepared_dir, tmp_path, make_video, capsys):
    good = videos_of(prepared_dir)[:2]
    broken = make_video(tmp_path / "broken.mp4", "corrupt")
    out = tmp_path / "maps"
    argv = ["explain", str(good[0]), str(broken), str(tmp_path / "missing.mp4"), str(good[1]),
            "--model", str(runs["st_adapter"]), "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and str(broken) in errors[0] and f"{tmp_path / 'missing.mp4'}: no such file" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{v.stem}.{ext}" for v in good for ext in ("json", "png"))
    for video in good:
        record = json.loads((out / f"{video.stem}.json").read_text())
        assert record["video"] == str(video) and len(record["attention"]) == 4  # the recipe's 4 frames
        frames = [entry["frame"] for entry in record["attention"]]
        assert frames == sorted(frames) and 0 <= frames[0] and frames[-1] < count_frames(video)
        for entry in record["attention"]:
            assert set(entry) == {"frame", "map", "before"}
            for grid in (entry["map"], entry["before"]):
                assert len(grid) == 8 and all(len(row) == 8 for row in grid)  # 64-pixel crop, 8-pixel patches
                values = [v for row in grid for v in row]
                assert min(values) >= 0 and sum(values) == pytest.approx(1, abs=1e-4)
        assert any(e["map"] != e["before"] for e in record["attention"])  # the adapters moved the attention
        with Image.open(out / f"{video.stem}.png") as image:
            assert image.format == "PNG" and image.width > image.height > 200
    assert main(["explain", str(broken), "--model", str(runs["st_adapter"]), "--out", str(tmp_path / "none")]) == 1


def test_without_adapters_before_equals_map(runs, prepared_dir, tmp_path):
    out = tmp_path / "maps"
    video = videos_of(prepared_dir)[0]
    assert main(["explain", str(video), "--model", str(runs["linear_probe"]), "--out", str(out)]) == 0
    record = json.loads((out / f"{video.stem}.json").read_text())
    assert all(entry["map"] == entry["before"] for entry in record["attention"])


def test_weights_are_those_of_the_block_attention(runs):
    """Against nn.MultiheadAttention's own averaged weights, on the backbone with the adapters."""
    model = load_model(runs["st_adapter"]).eval()
    clip = torch.randn(1, 3, 4, 64, 64)
    ours = cls_attention(model, clip)
    with torch.no_grad():
        x = model.visual._embeds(clip.transpose(1, 2).reshape(4, 3, 64, 64))
        *body, last = model.blocks
        for block in body:
            x = block(x, 4, fast=False)
        assert "before_attn" in last.adapters
        x = last.adapters["before_attn"](x, 4)
        h = last.ln_1(x)
        _, weights = last.attn(h, h, h, need_weights=True, average_attn_weights=True)
    patches = weights[:, 0, 1:]
    expected = (patches / patches.sum(dim=-1, keepdim=True)).reshape(4, 8, 8)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
