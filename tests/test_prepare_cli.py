"""`stadapt prepare` from the command line: exit codes, one-line errors, the summary."""

from __future__ import annotations

import json
import os
import signal

import pytest

from stadapt.cli import main
from stadapt.fileio import atomic_write_texts


def prepare(*args: str) -> int:
    return main(["prepare", *map(str, args)])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_folder_end_to_end_prints_the_summary(tmp_path, make_video, capsys):
    for cls in ("a", "b"):
        for i in range(3):
            make_video(tmp_path / "videos" / cls / f"{i}.mp4")
    assert prepare("folder", tmp_path / "videos", "--out", tmp_path / "out", "--workers", 1) == 0
    out = capsys.readouterr().out
    assert "train" in out and "val" in out and "2 of 2" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "classes.txt", "train.csv", "val.csv", "report.json", "probe-cache.json"}


def test_unknown_dataset_lists_the_choices(tmp_path, capsys):
    assert prepare("kinetics", tmp_path) == 2
    assert "choose one of: k400, ssv2, ek100, ucf101, hmdb51, folder, csv, synthetic" in one_error_line(capsys)


def test_decode_into_an_h264_store_and_a_bad_store_choice(tmp_path, capsys):
    out = tmp_path / "out"
    common = ("synthetic", tmp_path / "videos", "--out", out, "--classes", 2, "--videos-per-class", 2,
              "--frames", 12, "--workers", 1, "--decode")
    assert prepare(*common, "--store", "png") == 2
    assert "--store 'png': expected one of jpeg, h264" in one_error_line(capsys)
    assert not out.exists() and not (tmp_path / "videos").exists()  # a failed start writes nothing
    assert prepare(*common[:-1], "--store", "h264") == 2  # without --decode there is no store to write
    assert "--store h264: the frame store is written only with --decode" in one_error_line(capsys)
    assert not out.exists()
    assert prepare(*common, "--store", "h264") == 0
    info = json.loads((out / "store" / "info.json").read_text())
    assert (info["format"], info["codec"], info["videos"], info["frames"]) == (3, "h264", 4, 48)
    assert json.loads((out / "report.json").read_text())["store"]["codec"] == "h264"


def test_missing_root(tmp_path, capsys):
    assert prepare("ucf101", tmp_path / "nowhere") == 2
    assert f"{tmp_path / 'nowhere'}: no such directory" in one_error_line(capsys)


@pytest.mark.parametrize("dataset, looked_for", [
    ("ucf101", "classInd.txt"), ("hmdb51", "_test_split1.txt"), ("k400", "train.csv"),
    ("ssv2", "something-something-v2-labels.json or labels.json"), ("ek100", "EPIC_100_train.csv"),
    ("csv", "train.csv"),
])
def test_missing_annotations_say_what_and_where(tmp_path, capsys, dataset, looked_for):
    assert prepare(dataset, tmp_path, "--out", tmp_path / "out") == 2
    line = one_error_line(capsys)
    assert looked_for in line and str(tmp_path) in line


def test_malformed_line_is_one_line_with_file_and_line(tmp_path, capsys):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Run\r\n2 Jump extra\r\n")
    assert prepare("ucf101", tmp_path, "--out", tmp_path / "out") == 2
    assert f"{lists / 'classInd.txt'}:2: expected 'INDEX CLASS'" in one_error_line(capsys)


def test_no_usable_training_video_is_an_error_not_empty_manifests(tmp_path, make_video, capsys):
    make_video(tmp_path / "v" / "a" / "x.mp4", "corrupt")
    assert prepare("folder", tmp_path / "v", "--out", tmp_path / "out") == 2
    assert "no usable training video" in one_error_line(capsys)
    assert not (tmp_path / "out" / "train.csv").exists()


@pytest.mark.parametrize("args", [["--split", "4"], ["--workers", "0"]])
def test_bad_option_values_exit_2(tmp_path, args):
    assert prepare("ucf101", tmp_path, *args) == 2


def test_bad_size(tmp_path, capsys):
    assert prepare("synthetic", tmp_path, "--size", "80by64") == 2
    assert "--size must read WIDTHxHEIGHT" in one_error_line(capsys)


# -- the set of outputs is replaced whole ---------------------------------------------------

def test_interrupt_while_staging_keeps_the_old_set(tmp_path, monkeypatch):
    old = {tmp_path / "train.csv": "old train\n", tmp_path / "val.csv": "old val\n"}
    atomic_write_texts(old)
    real_fdopen = os.fdopen
    calls = []

    def interrupted_second_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fdopen(*args, **kwargs)

    monkeypatch.setattr(os, "fdopen", interrupted_second_file)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_texts({tmp_path / "train.csv": "new train\n", tmp_path / "val.csv": "new val\n"})
    assert {p: p.read_text() for p in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv", "val.csv"]  # no temporary left


def test_signal_during_the_renames_waits_until_all_are_done(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace_then_get_sigint(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_get_sigint)
    new = {tmp_path / "a.txt": "new a\n", tmp_path / "b.txt": "new b\n", tmp_path / "report.json": "{}\n"}
    with pytest.raises(KeyboardInterrupt):
        atomic_write_texts(new)
    assert {p: p.read_text() for p in new} == new


def test_sigterm_mid_run_leaves_the_previous_manifests(tmp_path, make_video, monkeypatch):
    from stadapt.data import prepare as prepare_module
    from stadapt.data.indexers import IndexOptions

    for cls in ("a", "b"):
        for i in range(3):
            make_video(tmp_path / "videos" / cls / f"{i}.mp4")
    out = tmp_path / "out"
    options = prepare_module.PrepareOptions("folder", tmp_path / "videos", out, index=IndexOptions())
    prepare_module.prepare(options)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    make_video(tmp_path / "videos" / "c" / "0.mp4")
    real_probe_many = prepare_module.probe_many

    def probe_then_get_killed(*args, **kwargs):
        result = real_probe_many(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(prepare_module, "probe_many", probe_then_get_killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(options)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {k: v for k, v in after.items() if k != "probe-cache.json"} == \
        {k: v for k, v in before.items() if k != "probe-cache.json"}
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_texts({tmp_path / "train.csv": "x\n"})
    finally:
        os.umask(umask)
    assert (tmp_path / "train.csv").stat().st_mode & 0o777 == 0o644
