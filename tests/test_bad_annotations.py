"""Annotations: a line the parser cannot read is one error naming the file and line
(exit code 2); a readable row that cannot be used on its own is skipped and listed in
report.json. The manifest parser (what training reads) is fuzzed here; the annotation
parsers are fuzzed in test_annotation_fuzz.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stadapt.cli import main
from stadapt.data.manifest import manifest_text, read_manifest
from stadapt.errors import DataError

K400_HEADER = "label,youtube_id,time_start,time_end,split\n"


def prepare(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["prepare", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def k400(root: Path, train: bytes, make_video) -> None:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_bytes(train)
    (root / "annotations" / "val.csv").write_bytes(K400_HEADER.encode())
    make_video(root / "train" / "a_000001_000011.mp4")
    make_video(root / "train" / "b_000001_000011.mp4")


def ssv2(root: Path, train: str) -> None:
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text(json.dumps({"Holding something": "0", "Moving something": "1"}))
    (root / "labels" / "train.json").write_text(train)
    (root / "labels" / "validation.json").write_text("[]")


@pytest.mark.parametrize("train, where, message", [
    (K400_HEADER + "run,a,1,11,train\nrun,b,1,11\n", "train.csv:3", "expected 5 fields"),
    (K400_HEADER + "run,a,1,11,train\n\"" + "x" * 200_000 + "\",b,1,11,train\n", "train.csv:3", "not valid CSV"),
    (K400_HEADER + "run,a,1,11,train\nrun,b,one,11,train\n", "train.csv:3",
     "time_start must be a non-negative integer"),
    (K400_HEADER.encode() + b"run,a,1,11,train\nr\xe9n,b,1,11,train\n", "train.csv:3", "not UTF-8 text"),
    ("label;youtube_id;time_start\n", "train.csv:1", "header lacks label, youtube_id"),
])
def test_k400_unreadable_line_is_one_error_with_file_and_line(tmp_path, capsys, make_video, train, where, message):
    k400(tmp_path, train if isinstance(train, bytes) else train.encode(), make_video)
    code, err = prepare(capsys, "k400", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'annotations' / where}:" in err and message in err
    assert not (tmp_path / "out" / "train.csv").exists()


@pytest.mark.parametrize("train, where, message", [
    ('[{"id": "1", "template": "Holding [something]"},\n{"id": 2 "template"}]', "train.json:2", "not valid JSON"),
    ('[{"id": "1", "template": "Holding [something]"},\n 7]', "train.json:entry 2", "expected an object with an 'id'"),
    ('{"id": "1"}', "train.json", "expected a list of entries"),
])
def test_ssv2_malformed_json_is_one_error_with_file_and_line(tmp_path, capsys, train, where, message):
    ssv2(tmp_path, train)
    code, err = prepare(capsys, "ssv2", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{tmp_path / 'labels' / where}:" in err and message in err


def test_rows_bad_on_their_own_are_skipped_and_listed(tmp_path, capsys, make_video):
    """Unknown class, duplicate id, a path out of ROOT: the row goes, the rest is prepared."""
    ssv2(tmp_path, json.dumps([
        {"id": "1", "template": "Holding [something]"},
        {"id": "2", "template": "Juggling [something]"},  # unknown class
        {"id": "1", "template": "Moving [something]"},  # duplicate id
        {"id": "../../etc/passwd", "template": "Moving [something]"},  # escapes the videos folder
        {"id": "3", "template": "Moving [something]"},
    ]))
    for i in (1, 3):
        make_video(tmp_path / "20bn-something-something-v2" / f"{i}.webm")
    code, _ = prepare(capsys, "ssv2", tmp_path, "--out", tmp_path / "out")
    assert code == 0
    train = report(tmp_path / "out")["splits"]["train"]
    assert (train["indexed"], train["videos"], train["skipped"]) == (2, 2, 3)
    source = tmp_path / "labels" / "train.json"
    assert [(r["where"], r["reason"]) for r in train["skipped_rows"]] == [
        (f"{source}:entry 2", "template 'Juggling [something]' is not in labels.json"),
        (f"{source}:entry 3", "id 1 is listed twice"),
        (f"{source}:entry 4", "id '../../etc/passwd' cannot be a file name"),
    ]


def test_ucf101_path_out_of_the_videos_folder_is_skipped(tmp_path, capsys, make_video):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Run\r\n2 Jump\r\n")
    (lists / "trainlist01.txt").write_text("Run/v_Run_g01_c01.avi 1\r\n../../secret/v.avi 1\r\n"
                                           "Jump/v_Jump_g01_c01.avi 2\r\n")
    (lists / "testlist01.txt").write_text("/abs/Run/v.avi\r\n")
    for name in ("Run/v_Run_g01_c01.avi", "Jump/v_Jump_g01_c01.avi"):
        make_video(tmp_path / "UCF-101" / name)
    code, _ = prepare(capsys, "ucf101", tmp_path, "--out", tmp_path / "out")
    assert code == 0
    splits = report(tmp_path / "out")["splits"]
    assert [r["where"].rsplit("/", 1)[1] for r in splits["train"]["skipped_rows"]] == ["trainlist01.txt:2"]
    assert "leaves the videos folder" in splits["train"]["skipped_rows"][0]["reason"]
    assert splits["val"]["skipped"] == 1


def test_file_and_folder_names_that_are_not_utf8_are_skipped(tmp_path, capsys, make_video):
    root = tmp_path / "videos"
    for name in (b"a/ok.mp4", b"b/ok.mp4", b"a/caf\xe9.mp4", b"\xff/x.mp4"):
        make_video(root / os.fsdecode(name))
    code, err = prepare(capsys, "folder", root, "--out", tmp_path / "out", "--val-fraction", "0")
    assert code == 0, err
    out = tmp_path / "out"
    assert (out / "classes.txt").read_text() == "a\nb\n"
    train = report(out)["splits"]["train"]
    assert train["videos"] == 2
    assert sorted(r["where"] for r in train["skipped_rows"]) == ["\\xff/x.mp4", "a/caf\\xe9.mp4"]
    assert all("not UTF-8" in r["reason"] for r in train["skipped_rows"])


# -- the manifests training reads -------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ("path,label\na.mp4,0\n../b.mp4,1\n", "train.csv:3: path '../b.mp4' escapes the videos root"),
    ("path,label\na.mp4,0\nb.mp4,cat\n", "train.csv:3: label is not an integer (cat)"),
    ("path,label\na.mp4,0\nb.mp4,7\n", "train.csv:3: label 7 is outside 0..1"),
    ("path,label\na.mp4,0,extra\n", "train.csv:2: expected 2 fields"),
    ("path,label,num_frames\na.mp4,0,many\n", "train.csv:2: num_frames, fps"),
    ("name,label\na.mp4,0\n", "header lacks the column 'path'"),
])
def test_hand_edited_manifest_is_one_error_with_file_and_line(tmp_path, body, message):
    (tmp_path / "train.csv").write_text(body)
    with pytest.raises(DataError) as info:
        read_manifest(tmp_path / "train.csv", tmp_path, {"label": 2})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_manifest_not_utf8_names_the_line(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"path,label\na.mp4,0\n\xff.mp4,1\n")
    with pytest.raises(DataError, match=r"train.csv:3: not UTF-8 text \(invalid start byte at byte 19\)"):
        read_manifest(tmp_path / "train.csv", tmp_path)


fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cells = st.sampled_from(["", "0", "1", "7", "-1", "x", "a.mp4", "../a.mp4", "/abs/b.mp4", "c/d.webm", "..", '"',
                         ",", "\n", "\r\n", " ", "1.5", "nan", "\x00", "é", "path", "label", "num_frames", "fps"])
manifest_texts = st.one_of(
    st.text(max_size=200),
    st.lists(cells, max_size=40).map("".join),
    st.lists(cells, max_size=30).map(lambda xs: "path,label,num_frames,fps,start_frame\n" + "".join(xs)),
)


@fuzz
@given(st.one_of(manifest_texts.map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
@example(b'"\n')  # an unclosed quote: the header "column" holds a line break (found by this test)
def test_manifest_parser_fuzz(tmp_path_factory, data):
    """Any bytes: samples whose relative paths stay under the root and whose labels fit, or one DataError line."""
    folder = tmp_path_factory.mktemp("m", numbered=True)
    (folder / "train.csv").write_bytes(data)
    root = Path("/videos")
    try:
        samples = read_manifest(folder / "train.csv", root, {"label": 3})
    except DataError as exc:
        assert "\n" not in str(exc) and str(folder / "train.csv") in str(exc)
        return
    for sample in samples:
        assert 0 <= sample.labels["label"] < 3
        assert sample.path.is_absolute() and ".." not in sample.path.parts


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/\\"), min_size=1, max_size=12)
rows = st.lists(st.fixed_dictionaries({
    "path": st.lists(names.filter(lambda n: n not in (".", "..") and n.strip() == n), min_size=1, max_size=3)
    .map("/".join),
    "label": st.integers(0, 4), "num_frames": st.none() | st.integers(1, 10_000),
}), max_size=8)


@fuzz
@given(rows)
def test_manifest_round_trip(tmp_path_factory, rows):
    """What prepare writes, training reads back unchanged, whatever the file names hold (commas, quotes,
    line breaks)."""
    folder = tmp_path_factory.mktemp("r", numbered=True)
    (folder / "train.csv").write_bytes(manifest_text(rows, ["path", "label", "num_frames"]).encode("utf-8"))
    samples = read_manifest(folder / "train.csv", Path("/videos"), {"label": 5})
    assert [(s.path, s.labels["label"], s.num_frames) for s in samples] == [
        (Path("/videos") / r["path"], r["label"], r["num_frames"]) for r in rows]


def test_oversized_csv_field_names_its_line(tmp_path):
    (tmp_path / "train.csv").write_text('path,label\na.mp4,0\n"' + "a" * 200_000 + '",1\n')
    with pytest.raises(DataError, match=r"train.csv:3: not valid CSV \(field larger than field limit"):
        read_manifest(tmp_path / "train.csv", tmp_path)
