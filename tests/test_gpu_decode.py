"""The CPU side of eval's GPU decoding (stadapt.data.gpu_decode), run on the CPU: the loader's
JPEG items, their collation and the batched decode + views, against the CPU path's clips.
The same code on a CUDA device (nvJPEG) is checked in test_gpu.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

import stadapt
from stadapt.data.dataset import build_dataset
from stadapt.data.gpu_decode import (
    StoredJpegClips,
    batch_jpegs,
    clip_views,
    collate_jpegs,
    decode_clips,
    decode_frames,
    decoded_batches,
    pack_jpegs,
    resolve_decode,
)
from stadapt.data.store import FrameStore, entry_path, write_store
from stadapt.errors import DataError
from stadapt.model.build import build_model


def eval_dataset(prepared_dir, *overrides):
    recipe = stadapt.load_recipe("demo", [f"data.root={prepared_dir}", "data.source=prepared", "model.num_classes=4",
                                          *overrides])
    return build_dataset(recipe, "val", train=False), recipe


@pytest.mark.parametrize("views", [("1", "1"), ("2", "3")])
def test_batched_decode_gives_the_cpu_paths_clips(prepared_dir, views):
    # test_resize 56 < the stored short side 64: the resize runs too, not only the crops
    dataset, recipe = eval_dataset(prepared_dir, f"data.test_views.temporal={views[0]}",
                                   f"data.test_views.spatial={views[1]}", "data.test_resize=56", "data.crop=48")
    loader = DataLoader(StoredJpegClips(dataset), batch_size=3, collate_fn=collate_jpegs)
    batch = next(iter(loader))
    jpegs = batch_jpegs(batch)
    assert len(jpegs) == 3 and all(len(j) == int(views[0]) * 8 for j in jpegs)
    assert jpegs[0][0].dtype == torch.uint8 and jpegs[0][0].dim() == 1  # bytes, not pixels
    assert bytes(jpegs[0][0][:2]) == b"\xff\xd8" and bytes(jpegs[2][-1][-2:]) == b"\xff\xd9"  # whole files
    assert batch["jpegs"].dim() == 1 and len(batch["jpegs"]) == int(batch["jpeg_sizes"].sum())  # one buffer
    clips, ok = decode_clips(jpegs, batch["ok"], recipe.data, torch.device("cpu"))
    expected = torch.stack([dataset[i]["clip"] for i in batch["index"].tolist()])
    assert ok.all() and clips.shape == expected.shape == (3, int(views[0]) * int(views[1]), 3, 8, 48, 48)
    difference = (clips.int() - expected.int()).abs()
    assert difference.max() <= 2 and difference.float().mean() < 0.5  # two resamplers' rounding
    assert batch["label"]["label"].tolist() == [dataset[i]["label"]["label"] for i in batch["index"].tolist()]


def test_unreadable_and_damaged_videos_are_not_ok_and_the_rest_decode(prepared_dir, tmp_path):
    dataset, recipe = eval_dataset(prepared_dir)
    jpegs = StoredJpegClips(dataset)
    items = [jpegs[i] for i in range(3)]
    items[1].update(pack_jpegs([torch.frombuffer(bytearray(b"\xff\xd8 not a JPEG"), dtype=torch.uint8)] * 8))
    entry = entry_path(prepared_dir, dataset.samples[2].path)
    saved = entry.read_bytes()
    try:
        entry.unlink()
        items[2] = jpegs[2]  # not in the store any more
    finally:
        entry.write_bytes(saved)
    assert items[2]["ok"] is False and len(items[2]["jpegs"]) == len(items[2]["jpeg_sizes"]) == 0
    batch = collate_jpegs(items)
    assert batch["jpeg_counts"].tolist() == [8, 8, 0]
    clips, ok = decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, torch.device("cpu"))
    assert ok.tolist() == [True, False, False]
    assert torch.equal(clips[0], dataset[0]["clip"]) and clips[1:].eq(0).all()


def test_decode_choice(prepared_dir):
    dataset, _ = eval_dataset(prepared_dir)
    cpu = torch.device("cpu")
    assert resolve_decode("auto", dataset, cpu) == "cpu" and resolve_decode("cpu", dataset, cpu) == "cpu"
    with pytest.raises(DataError, match="--decode gpu: needs a CUDA device and data.source = prepared"):
        resolve_decode("gpu", dataset, cpu)
    with pytest.raises(DataError, match="--decode 'nvdec': expected one of auto, cpu, gpu"):
        resolve_decode("nvdec", dataset, cpu)


def test_an_h264_store_is_decoded_on_the_cpu(prepared_dir, tmp_path):
    dataset, _ = eval_dataset(prepared_dir)
    write_store(tmp_path / "h264", dataset.samples, short_side=48, codec="h264")
    on_h264 = SimpleNamespace(store=FrameStore(tmp_path / "h264"))
    cuda = torch.device("cuda")  # only its type is looked at
    assert resolve_decode("auto", on_h264, cuda) == "cpu" and resolve_decode("auto", dataset, cuda) == "gpu"
    with pytest.raises(DataError, match=r"with a JPEG store \(here: cuda, data.source = prepared, frames stored as "
                                        r"h264\)"):
        resolve_decode("gpu", on_h264, cuda)


def test_batches_decoded_ahead_arrive_in_order_and_a_loader_error_reaches_the_caller(prepared_dir):
    dataset, recipe = eval_dataset(prepared_dir)
    loader = DataLoader(StoredJpegClips(dataset), batch_size=2, collate_fn=collate_jpegs)
    cpu = torch.device("cpu")
    got = list(decoded_batches(loader, recipe.data, cpu, ahead=1))
    assert [b["index"].tolist() for b, _, _ in got] == [[0, 1], [2, 3]]
    for batch, clips, ok in got:
        assert ok.all() and torch.equal(clips, decode_clips(batch_jpegs(batch), batch["ok"], recipe.data, cpu)[0])

    def failing():
        yield next(iter(loader))
        raise DataError("store/ab/abc.frames: damaged frame store entry")

    batches = decoded_batches(failing(), recipe.data, cpu)
    assert next(batches)[0]["index"].tolist() == [0, 1]
    with pytest.raises(DataError, match="damaged frame store entry"):
        next(batches)


def test_the_eval_loop_reports_where_it_decoded_and_its_clips_per_second(prepared_dir):
    from stadapt.engine.distributed import DistContext
    from stadapt.engine.evaluate import UNTIMED_BATCHES, predict_split

    dataset, recipe = eval_dataset(prepared_dir, "train.device_batch_size=1", "train.workers=0",
                                   "data.test_views.temporal=3")  # a video a batch
    model = build_model(recipe)  # the engine's own, {head: logits}
    preds = predict_split(model, dataset, recipe, DistContext())
    assert preds.decode == "cpu" and preds.ok.all() and len(dataset) > UNTIMED_BATCHES
    assert preds.clips_per_s > 0
    _, whole = eval_dataset(prepared_dir, "train.device_batch_size=8", "train.workers=0",
                            "data.test_views.temporal=3")  # all 4 videos in one batch
    assert predict_split(model, dataset, whole, DistContext()).clips_per_s is None  # nothing left to time


def test_the_decode_thread_ends_when_the_consumer_stops_early(prepared_dir):
    dataset, recipe = eval_dataset(prepared_dir)
    loader = DataLoader(StoredJpegClips(dataset), batch_size=1, collate_fn=collate_jpegs)
    assert len(loader) >= 4  # one taken, one queued, one waiting to be queued, one never read
    batches = decoded_batches(loader, recipe.data, torch.device("cpu"), ahead=1)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "stadapt-gpu-decode"]


def test_a_decoder_that_marks_files_undecodable_makes_only_their_videos_not_ok(prepared_dir):
    from torchvision.io import decode_jpeg

    dataset, recipe = eval_dataset(prepared_dir)
    batch = collate_jpegs([StoredJpegClips(dataset)[i] for i in range(3)])
    jpegs = batch_jpegs(batch)
    damaged = jpegs[1][3].data_ptr()

    def per_file(files):  # as nvImageCodec reports it: None in the failed file's place, no exception
        return [None if f.data_ptr() == damaged else decode_jpeg(f) for f in files]

    clips, ok = decode_clips(jpegs, batch["ok"], recipe.data, torch.device("cpu"), per_file)
    assert ok.tolist() == [True, False, True] and clips[1].eq(0).all()
    assert torch.equal(clips[0], dataset[0]["clip"]) and torch.equal(clips[2], dataset[2]["clip"])


def test_videos_of_different_frame_sizes_in_one_batch_each_get_their_own_views(prepared_dir):
    from torchvision.io import decode_jpeg, encode_jpeg
    from torchvision.transforms.functional import resize

    dataset, recipe = eval_dataset(prepared_dir, "data.test_resize=56", "data.crop=48")
    items = [StoredJpegClips(dataset)[i] for i in range(3)]
    larger = [encode_jpeg(resize(decode_jpeg(f), [80, 96], antialias=True), quality=90)
              for f in batch_jpegs(collate_jpegs([items[1]]))[0]]
    items[1].update(pack_jpegs(larger))  # the middle video's frames are 96×80, the others' as stored
    cpu = torch.device("cpu")
    jpegs = batch_jpegs(collate_jpegs(items))
    frames = decode_frames(jpegs, torch.ones(3, dtype=torch.bool), cpu)
    assert sorted(positions for positions, _ in frames.groups) == [[0, 2], [1]]
    clips = clip_views(frames, recipe.data)
    for i in range(3):  # each video as if it were decoded alone
        assert torch.equal(clips[i], decode_clips([jpegs[i]], torch.ones(1, dtype=torch.bool), recipe.data, cpu)[0][0])
    assert not torch.equal(clips[0], clips[1])
