import logging
import shutil

import pytest
import torch
from conftest import make_prepared
from torch.utils.data import DataLoader

from stadapt.data import dataset as dataset_module
from stadapt.data.dataset import build_dataset
from stadapt.data.manifest import PreparedDataset, write_classes, write_manifest
from stadapt.errors import DataError
from stadapt.recipe import load_recipe


def recipe_for(root, *overrides):
    return load_recipe("demo", [f"data.root={root}", "model.num_classes=4", *overrides])


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(dataset_module, "_warned", set())


@pytest.mark.parametrize("source", ["raw", "prepared"])
def test_items_train_and_test(prepared_dir, source):
    recipe = recipe_for(prepared_dir, f"data.source={source}", "data.test_views={temporal: 2, spatial: 3}")
    train = build_dataset(recipe, "train", train=True)
    assert train.num_samples == len(train) == 12 and train.class_names["label"][0] == "move_left"
    item = train[3]
    assert item["clip"].shape == (3, 8, 64, 64) and item["clip"].dtype == torch.uint8
    assert (item["index"], item["ok"], item["skipped"]) == (3, True, 0) and isinstance(item["label"]["label"], int)
    val = build_dataset(recipe, "val", train=False)
    item = val[0]
    assert item["clip"].shape == (6, 3, 8, 64, 64) and item["ok"]


def test_same_seed_epoch_index_same_clip(prepared_dir):
    a = build_dataset(recipe_for(prepared_dir, "data.mirror=true"), "train", train=True)
    b = build_dataset(recipe_for(prepared_dir, "data.mirror=true"), "train", train=True)
    assert torch.equal(a[5]["clip"], b[5]["clip"])
    a.set_epoch(1)
    assert not torch.equal(a[5]["clip"], b[5]["clip"])
    b.set_epoch(1)
    assert torch.equal(a[5]["clip"], b[5]["clip"])
    c = build_dataset(recipe_for(prepared_dir, "data.mirror=true", "train.seed=7"), "train", train=True)
    assert not torch.equal(c[5]["clip"], b[5]["clip"])


def test_raw_and_store_give_similar_clips(prepared_dir):
    raw = build_dataset(recipe_for(prepared_dir, "data.source=raw"), "val", train=False)
    stored = build_dataset(recipe_for(prepared_dir, "data.source=prepared"), "val", train=False)
    diff = (raw[1]["clip"].float() - stored[1]["clip"].float()).abs().mean()
    assert diff < 8


@pytest.fixture()
def corrupt_prepared(tmp_path):
    root = make_prepared(tmp_path, classes=2, videos_per_class=4, frames=16, decode=False)
    bad = PreparedDataset.open(root).samples("train")[1].path
    bad.write_bytes(b"this is no longer a video")
    return root, bad


def test_corrupt_video_is_skipped_with_one_warning_and_full_batches(corrupt_prepared, caplog):
    root, bad = corrupt_prepared
    dataset = build_dataset(recipe_for(root, "model.num_classes=2"), "train", train=True)
    loader = DataLoader(dataset, batch_size=3, sampler=[1, 0, 1, 2, 1, 3], num_workers=0)
    with caplog.at_level(logging.WARNING, logger="stadapt.data"):
        batches = list(loader)
    assert [b["clip"].shape[0] for b in batches] == [3, 3]
    assert int(sum(b["skipped"].sum() for b in batches)) == 3
    assert all(b["ok"].all() for b in batches)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()
    replaced = dataset[1]
    assert replaced["index"] != 1 and replaced["skipped"] == 1
    assert torch.equal(replaced["clip"], dataset[1]["clip"])  # the replacement is deterministic


def test_corrupt_video_in_testing_is_not_ok(corrupt_prepared):
    root, bad = corrupt_prepared
    shutil.copy(root / "train.csv", root / "val.csv")
    dataset = build_dataset(recipe_for(root, "model.num_classes=2"), "val", train=False)
    item = dataset[1]
    assert not item["ok"] and item["clip"].shape == (1, 3, 8, 64, 64) and item["clip"].sum() == 0
    assert dataset[0]["ok"]


def test_several_heads_give_a_label_dict(tmp_path):
    root = make_prepared(tmp_path, classes=2, videos_per_class=2, frames=12, decode=False)
    rows = [{"path": s.path.as_posix(), "label": 0, "verb": s.labels["label"], "noun": 1 - s.labels["label"]}
            for s in PreparedDataset.open(root).samples("train")]
    write_manifest(root / "train.csv", rows, ["path", "label", "verb", "noun"])
    write_classes(root, ["a", "b"], head="verb")
    write_classes(root, ["x", "y"], head="noun")
    dataset = build_dataset(load_recipe("demo", [f"data.root={root}", "model.num_classes={verb: 2, noun: 2}"]),
                            "train", train=True)
    item = dataset[0]
    assert item["label"] == {"verb": rows[0]["verb"], "noun": rows[0]["noun"]}
    assert set(dataset.class_names) == {"verb", "noun"}


def test_mismatched_class_count_and_missing_store_are_one_line(tmp_path, prepared_dir):
    with pytest.raises(DataError, match="model.num_classes = 400"):
        build_dataset(load_recipe("demo", [f"data.root={prepared_dir}", "model.num_classes=400"]), "train", True)
    root = make_prepared(tmp_path, classes=2, videos_per_class=1, decode=False)
    with pytest.raises(DataError, match="store/info.json: missing"):
        build_dataset(recipe_for(root, "model.num_classes=2", "data.source=prepared"), "train", True)
