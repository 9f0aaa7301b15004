"""Each official layout, with the official file names and line formats, end to end.

Every data set here holds a missing video, a corrupt one and a zero-byte one, which must be
counted in report.json and left out of the manifests.
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from stadapt.cli import main
from stadapt.data.decode import read_frames
from stadapt.data.encode import write_video
from stadapt.data.indexers import IndexOptions
from stadapt.data.manifest import PreparedDataset
from stadapt.data.prepare import PrepareOptions, prepare
from stadapt.data.sampling import clip_indices
from stadapt.errors import DataError
from stadapt.recipe import DataConfig


def run(dataset: str, root: Path, out: Path, **index_options) -> dict:
    return prepare(PrepareOptions(dataset, root, out, index=IndexOptions(**index_options)))


def rows(out: Path, split: str) -> list[dict[str, str]]:
    with open(out / f"{split}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def problems(report: dict, split: str) -> dict[str, str]:
    return {p["path"]: p["problem"] for p in report["splits"][split]["problems"]}


# -- UCF-101 ---------------------------------------------------------------------------------

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "YoYo"]


@pytest.fixture
def ucf101(tmp_path, make_video) -> Path:
    """UCF-101/{Class}/v_{Class}_gGG_c01.avi for groups 1-4; split N tests on group N."""
    root = tmp_path / "ucf"
    for cls in UCF_CLASSES:
        for g in range(1, 5):
            make_video(root / "UCF-101" / cls / f"v_{cls}_g{g:02d}_c01.avi")
    make_video(root / "UCF-101/YoYo/v_YoYo_g02_c01.avi", "empty")
    make_video(root / "UCF-101/Basketball/v_Basketball_g03_c01.avi", "corrupt")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    crlf = lambda lines: "".join(f"{line}\r\n" for line in lines).encode()  # noqa: E731
    (lists / "classInd.txt").write_bytes(crlf(f"{i} {c}" for i, c in enumerate(UCF_CLASSES, 1)))
    for n in (1, 2, 3):
        train = [f"{c}/v_{c}_g{g:02d}_c01.avi {i}" for i, c in enumerate(UCF_CLASSES, 1) for g in range(1, 5) if g != n]
        train += ["YoYo/v_YoYo_g09_c01.avi 3", "YoYo/v_YoYo_g10_c01.avi 7"]  # missing; label beyond classInd
        test = [f"{c}/v_{c}_g{n:02d}_c01.avi" for c in UCF_CLASSES]
        (lists / f"trainlist0{n}.txt").write_bytes(crlf(train))
        (lists / f"testlist0{n}.txt").write_bytes(crlf(test))
    return root


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_official_splits(ucf101, tmp_path, split):
    out = tmp_path / "out"
    report = run("ucf101", ucf101, out, split=split)
    assert (out / "classes.txt").read_text().splitlines() == UCF_CLASSES
    train, val = rows(out, "train"), rows(out, "val")
    broken = {"YoYo/v_YoYo_g02_c01.avi", "Basketball/v_Basketball_g03_c01.avi"}
    expect_val = {f"{c}/v_{c}_g{split:02d}_c01.avi": str(i) for i, c in enumerate(UCF_CLASSES)}
    expect_train = {f"{c}/v_{c}_g{g:02d}_c01.avi": str(i) for i, c in enumerate(UCF_CLASSES)
                    for g in range(1, 5) if g != split}
    assert {r["path"]: r["label"] for r in val} == {p: c for p, c in expect_val.items() if p not in broken}
    assert {r["path"]: r["label"] for r in train} == {p: c for p, c in expect_train.items() if p not in broken}
    assert all(r["num_frames"] == "6" and r["fps"] == "25.0" for r in train + val)
    t = report["splits"]["train"]
    assert (t["indexed"], t["missing"], t["skipped"]) == (10, 1, 1)
    assert t["skipped_rows"][0]["where"].endswith(f"trainlist0{split}.txt:11")
    assert t["unreadable"] + report["splits"]["val"]["unreadable"] == 2
    assert problems(report, "train")["YoYo/v_YoYo_g09_c01.avi"] == "missing"
    assert report["split"] == split and report["videos_root"] == str((ucf101 / "UCF-101").resolve())


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
def test_split_all_writes_each_official_split_and_probes_once(dataset, ucf101, hmdb51, tmp_path, capsys):
    """`--split all`: OUT/split1..3, each the same files as preparing that split alone."""
    root = {"ucf101": ucf101, "hmdb51": hmdb51}[dataset]
    out = tmp_path / "all"
    assert main(["prepare", dataset, str(root), "--out", str(out), "--split", "all", "--workers", "1"]) == 0
    assert capsys.readouterr().out.count("│ train │") == 3  # one summary table per split
    reports = [json.loads((out / f"split{n}" / "report.json").read_text()) for n in (1, 2, 3)]
    assert [r["split"] for r in reports] == [1, 2, 3]
    assert reports[0]["probe"]["probed"] > 0 and [r["probe"]["probed"] for r in reports[1:]] == [0, 0]
    assert (out / "probe-cache.json").is_file()
    for n in (1, 2, 3):
        alone = tmp_path / f"alone{n}"
        run(dataset, root, alone, split=n)
        for name in ("classes.txt", "train.csv", "val.csv"):
            assert (out / f"split{n}" / name).read_bytes() == (alone / name).read_bytes()
    assert main(["prepare", "k400", str(root), "--out", str(tmp_path / "k"), "--split", "all"]) == 2
    assert "--split all: k400 has no official splits (only ucf101, hmdb51)" in capsys.readouterr().err
    assert main(["prepare", dataset, str(root), "--out", str(tmp_path / "x"), "--split", "4"]) == 2
    assert not (tmp_path / "k").exists() and not (tmp_path / "x").exists()


def test_rerun_probes_nothing_unchanged(ucf101, tmp_path, make_video):
    out = tmp_path / "out"
    first = run("ucf101", ucf101, out)
    assert first["probe"]["probed"] == 12 and first["probe"]["cached"] == 0
    second = run("ucf101", ucf101, out)
    assert (second["probe"]["probed"], second["probe"]["cached"]) == (0, 12)
    make_video(ucf101 / "UCF-101/YoYo/v_YoYo_g02_c01.avi")  # repaired
    third = run("ucf101", ucf101, out)
    assert (third["probe"]["probed"], third["probe"]["cached"]) == (1, 11)
    assert third["splits"]["train"]["unreadable"] == 1
    assert PreparedDataset.open(out).samples("train")[0].path.is_file()


def test_ucf101_malformed_line_names_file_and_line(ucf101, tmp_path):
    path = ucf101 / "ucfTrainTestlist" / "trainlist01.txt"
    path.write_bytes(path.read_bytes().replace(b"g02_c01.avi 1", b"g02_c01.avi one", 1))
    with pytest.raises(Exception) as info:
        run("ucf101", ucf101, tmp_path / "out")
    assert f"{path}:1:" in str(info.value) and "'one'" in str(info.value)


# -- HMDB-51 ---------------------------------------------------------------------------------

HMDB_CLASSES = ["brush_hair", "cartwheel", "sword_exercise"]


def hmdb_role(i: int, split: int) -> int:
    """Video i of a class: test (2) in split i+1, unused (0) when i == 5, train (1) otherwise."""
    return 2 if i == split - 1 else 0 if i == 5 else 1


@pytest.fixture
def hmdb51(tmp_path, make_video) -> Path:
    root = tmp_path / "hmdb"
    for cls in HMDB_CLASSES:
        for i in range(6):
            make_video(root / cls / f"{cls}_{i}.avi")
    make_video(root / "cartwheel/cartwheel_3.avi", "corrupt")
    make_video(root / "sword_exercise/sword_exercise_4.avi", "empty")
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls in HMDB_CLASSES:
        for n in (1, 2, 3):
            lines = [f"{cls}_{i}.avi {hmdb_role(i, n)} " for i in range(6)]  # the official trailing space
            if cls == "brush_hair":
                lines.append("brush_hair_9.avi 1 ")  # listed, not on disk
            (splits / f"{cls}_test_split{n}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_official_splits(hmdb51, tmp_path, split):
    out = tmp_path / "out"
    report = run("hmdb51", hmdb51, out, split=split)
    assert (out / "classes.txt").read_text().splitlines() == HMDB_CLASSES
    broken = {"cartwheel/cartwheel_3.avi", "sword_exercise/sword_exercise_4.avi"}
    for split_name, role in (("train", 1), ("val", 2)):
        expect = {f"{c}/{c}_{i}.avi": str(label) for label, c in enumerate(HMDB_CLASSES)
                  for i in range(6) if hmdb_role(i, split) == role}
        got = {r["path"]: r["label"] for r in rows(out, split_name)}
        assert got == {p: c for p, c in expect.items() if p not in broken}
        listed = len(expect) + (split_name == "train")
        assert report["splits"][split_name]["indexed"] == listed
    assert report["splits"]["train"]["missing"] == 1
    assert sum(report["splits"][s]["unreadable"] for s in ("train", "val")) == 2


def test_hmdb51_bad_split_id_names_file_and_line(hmdb51, tmp_path):
    path = hmdb51 / "testTrainMulti_7030_splits" / "cartwheel_test_split1.txt"
    path.write_text(path.read_text().replace("cartwheel_2.avi 1", "cartwheel_2.avi 5"))
    with pytest.raises(Exception, match=f"{path}:3: split id must be 0"):
        run("hmdb51", hmdb51, tmp_path / "out")


# Official HMDB-51 names: brackets, '!', '#', parentheses and ';' all occur.
HMDB_ODD_NAMES = {"cartwheel": ["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi",
                                "#20_Rhythm_clap_cartwheel_u_nm_np1_fr_goo_0.avi"],
                  "sword_exercise": ["[HD]_Sword_Training;_sword_exercise_f_nm_np1_ri_bad_1.avi",
                                     "Veoh_Alpha_sword_exercise_h_nm_np2_ba_goo_0.avi"]}


@pytest.mark.parametrize("wrapper", ["hmdb51_org", "HMDB51 copy"])
def test_hmdb51_under_a_wrapping_folder_without_the_first_class(tmp_path, make_video, wrapper):
    """brush_hair, the first class, is not unpacked (yet): the wrapper still holds the others."""
    root = tmp_path / "hmdb"
    for cls, names in HMDB_ODD_NAMES.items():
        for name in names:
            make_video(root / wrapper / cls / name)
    (root / "brush_hair").mkdir(parents=True)  # an empty stray folder at the top
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("Brushing_Hair_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n")
    for cls, (train, test) in HMDB_ODD_NAMES.items():
        (splits / f"{cls}_test_split1.txt").write_text(f"{train} 1 \n{test} 2 \n")
    out = tmp_path / "out"
    report = run("hmdb51", root, out)
    assert report["videos_root"] == str((root / wrapper).resolve())
    assert {r["path"]: r["label"] for r in rows(out, "train")} == {
        "cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi": "1",
        "sword_exercise/[HD]_Sword_Training;_sword_exercise_f_nm_np1_ri_bad_1.avi": "2"}
    assert {r["path"]: r["label"] for r in rows(out, "val")} == {
        "cartwheel/#20_Rhythm_clap_cartwheel_u_nm_np1_fr_goo_0.avi": "1",
        "sword_exercise/Veoh_Alpha_sword_exercise_h_nm_np2_ba_goo_0.avi": "2"}
    assert problems(report, "train") == {"brush_hair/Brushing_Hair_brush_hair_u_nm_np1_ba_goo_0.avi": "missing"}
    samples = PreparedDataset.open(out).samples("train")
    assert read_frames(samples[1].path, [0, 5]).shape == (2, 32, 32, 3)  # '[', ';' in the name


# -- Something-Something-v2 ------------------------------------------------------------------

SSV2_LABELS = {"Putting something on a surface": "1", "Holding something next to something": "0",
               "Pushing something from left to right": "2"}


@pytest.fixture(params=["dashed", "folder"])
def ssv2(request, tmp_path, make_video) -> Path:
    root = tmp_path / "ssv2"
    if request.param == "dashed":
        names = {k: root / f"something-something-v2-{k}.json" for k in ("labels", "train", "validation")}
    else:
        names = {k: root / "labels" / f"{k}.json" for k in ("labels", "train", "validation")}
    names["labels"].parent.mkdir(parents=True)
    names["labels"].write_text(json.dumps(SSV2_LABELS))
    entry = lambda i, t: {"id": str(i), "label": "a thing", "template": t, "placeholders": ["thing"]}  # noqa: E731
    train = [entry(1, "Putting [something] on a surface"), entry(2, "Holding [something] next to [something]"),
             entry(3, "Pushing [something] from left to right"), entry(4, "Holding [something] next to [something]"),
             entry(5, "Putting [something] on a surface"),  # corrupt
             entry(6, "Pushing [something] from left to right"),  # zero bytes
             entry(7, "Putting [something] on a surface"),  # missing
             entry(8, "Spinning [something] on its axis"),  # not in labels.json
             entry(1, "Putting [something] on a surface")]  # duplicate id
    val = [entry(20, "Pushing [something] from left to right"), entry(21, "Holding [something] next to [something]")]
    names["train"].write_text(json.dumps(train))
    names["validation"].write_text(json.dumps(val))
    for i in (1, 2, 3, 4, 20, 21):
        make_video(root / "20bn-something-something-v2" / f"{i}.webm")
    make_video(root / "20bn-something-something-v2/5.webm", "corrupt")
    make_video(root / "20bn-something-something-v2/6.webm", "empty")
    return root


def test_ssv2_templates_map_through_labels_json(ssv2, tmp_path):
    out = tmp_path / "out"
    report = run("ssv2", ssv2, out)
    assert (out / "classes.txt").read_text().splitlines() == [
        "Holding something next to something", "Putting something on a surface", "Pushing something from left to right"]
    assert {r["path"]: r["label"] for r in rows(out, "train")} == {
        "1.webm": "1", "2.webm": "0", "3.webm": "2", "4.webm": "0"}
    assert {r["path"]: r["label"] for r in rows(out, "val")} == {"20.webm": "2", "21.webm": "0"}
    t = report["splits"]["train"]
    assert (t["indexed"], t["videos"], t["missing"], t["unreadable"], t["skipped"]) == (7, 4, 1, 2, 2)
    assert [r["reason"] for r in t["skipped_rows"]] == [
        "template 'Spinning [something] on its axis' is not in labels.json", "id 1 is listed twice"]
    assert problems(report, "train") == {"5.webm": "unreadable", "6.webm": "unreadable", "7.webm": "missing"}


# -- Kinetics-400 ----------------------------------------------------------------------------

K400_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


@pytest.fixture
def k400(tmp_path, make_video) -> Path:
    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    train = [("passing American football (in game)", "abc-123_xyz", 10, 20), ("riding a bike", "Zz_9", 0, 10),
             ("abseiling", "q1", 5, 15), ("riding a bike", "gone1", 1, 11), ("abseiling", "gone2", 0, 10),
             ("abseiling", "noise", 0, 10), ("riding a bike", "zero", 30, 40), ("abseiling", "q1", 5, 15)]
    val = [("abseiling", "v1", 0, 10), ("passing American football (in game)", "v2", 100, 110)]
    for name, entries in (("train", train), ("val", val)):
        text = K400_HEADER + "".join(f'"{label}",{yid},{s},{e},{name},0\n' for label, yid, s, e in entries)
        (root / "annotations" / f"{name}.csv").write_text(text)
    # train: one folder per class; val: flat, other containers.
    make_video(root / "train/passing American football (in game)/abc-123_xyz_000010_000020.mp4")
    make_video(root / "train/riding a bike/Zz_9_000000_000010.mp4")
    make_video(root / "train/abseiling/q1_000005_000015.mp4")
    make_video(root / "train/abseiling/noise_000000_000010.mp4", "corrupt")
    make_video(root / "train/riding a bike/zero_000030_000040.mp4", "empty")
    make_video(root / "val/v1_000000_000010.mkv")
    make_video(root / "val/v2_000100_000110.webm")
    return root


def test_k400_quoted_labels_layouts_and_missing_videos(k400, tmp_path):
    out = tmp_path / "out"
    report = run("k400", k400, out)
    assert (out / "classes.txt").read_text().splitlines() == [
        "abseiling", "passing American football (in game)", "riding a bike"]
    assert {r["path"]: r["label"] for r in rows(out, "train")} == {
        "train/passing American football (in game)/abc-123_xyz_000010_000020.mp4": "1",
        "train/riding a bike/Zz_9_000000_000010.mp4": "2", "train/abseiling/q1_000005_000015.mp4": "0"}
    assert {r["path"]: r["label"] for r in rows(out, "val")} == {
        "val/v1_000000_000010.mkv": "0", "val/v2_000100_000110.webm": "1"}
    t = report["splits"]["train"]
    assert (t["indexed"], t["missing"], t["unreadable"], t["skipped"]) == (7, 2, 2, 1)
    assert t["skipped_rows"][0]["reason"] == "duplicate of line 4"
    assert problems(report, "train")["train/gone1_000001_000011.mp4"] == "missing"


K400_NAMINGS = [("train.csv", "validate.csv"), ("kinetics_train.csv", "kinetics_val.csv"),
                ("kinetics-400_train.csv", "kinetics-400_val.csv"),
                ("kinetics-400_train.csv", "kinetics-400_validate.csv"),
                ("kinetics400_train.csv", "kinetics400_val.csv"),
                ("kinetics_400_train.csv", "kinetics_400_validation.csv")]


@pytest.mark.parametrize("folder", ["annotations", ""])
@pytest.mark.parametrize("train_name,val_name", K400_NAMINGS)
def test_k400_annotation_names_of_every_release(k400, tmp_path, train_name, val_name, folder):
    annotations = k400 / "annotations"
    (annotations / "train.csv").rename(k400 / folder / train_name)
    (annotations / "val.csv").rename(k400 / folder / val_name)
    test_name = train_name.replace("train", "test")  # the unlabelled test split, not read
    (k400 / folder / test_name).write_text("youtube_id,time_start,time_end,split\nt1,0,10,test\n")
    run("k400", k400, tmp_path / "out")
    assert {r["path"] for r in rows(tmp_path / "out", "val")} == {
        "val/v1_000000_000010.mkv", "val/v2_000100_000110.webm"}
    assert len(rows(tmp_path / "out", "train")) == 3


def test_k400_mmaction2_layout(k400, tmp_path):
    """What mmaction2's download tools write: annotations/kinetics_*.csv, videos_train/, videos_val/."""
    (k400 / "annotations/train.csv").rename(k400 / "annotations/kinetics_train.csv")
    (k400 / "annotations/val.csv").rename(k400 / "annotations/kinetics_val.csv")
    (k400 / "train").rename(k400 / "videos_train")
    (k400 / "val").rename(k400 / "videos_val")
    run("k400", k400, tmp_path / "out")
    assert {r["path"] for r in rows(tmp_path / "out", "val")} == {
        "videos_val/v1_000000_000010.mkv", "videos_val/v2_000100_000110.webm"}
    assert len(rows(tmp_path / "out", "train")) == 3


def test_k400_without_annotations_names_every_file_it_looked_for(k400, tmp_path):
    (k400 / "annotations/train.csv").rename(k400 / "annotations/train-list.csv")
    with pytest.raises(DataError) as info:
        run("k400", k400, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith("Kinetics-400 train annotations: found no train.csv or ")
    for name in ("train.csv", "kinetics_train.csv", "kinetics-400_train.csv", "kinetics400_train.csv", "annotations/"):
        assert name in message
    assert not (tmp_path / "out").exists()


def test_k400_bad_time_names_file_and_line(k400, tmp_path):
    path = k400 / "annotations" / "val.csv"
    path.write_text(path.read_text().replace(",100,", ",1e2,"))
    with pytest.raises(Exception, match=f"{path}:3: time_start must be a non-negative integer"):
        run("k400", k400, tmp_path / "out")


# -- EPIC-Kitchens-100 -----------------------------------------------------------------------

EK_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
             "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def ek_timestamp(seconds: float) -> str:
    """EPIC's HH:MM:SS.ss, e.g. 00:00:48.30."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes // 60):02d}:{int(minutes % 60):02d}:{rest:05.2f}"


def ek_row(nid, participant, video, start, stop, verb, noun):
    """A row of EPIC_100_train.csv for the segment start..stop seconds. Its start_frame /
    stop_frame count frames at 60 fps from 1, as the official files do for every video."""
    return (f'{nid},{participant},{video},{ek_timestamp(start)},{ek_timestamp(start)},{ek_timestamp(stop)},'
            f'{round(start * 60) + 1},{round(stop * 60) + 1},"do it",v,{verb},n,{noun},"[\'n\']",[{noun}]\n')


def write_ek_classes(ann: Path) -> None:
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "EPIC_100_verb_classes.csv").write_text(
        "id,key,instances,category\n0,take,\"['take']\",retrieve\n1,put,\"['put']\",leave\n2,wash,\"['wash']\",clean\n")
    (ann / "EPIC_100_noun_classes.csv").write_text(
        "id,key,instances,category\n0,tap,\"['tap']\",appliances\n1,plate,\"['plate']\",crockery\n"
        "2,knife,\"['knife']\",cutlery\n3,cup,\"['cup']\",crockery\n")


@pytest.fixture
def ek100(tmp_path, make_video) -> Path:
    """Videos of 6 frames at 25 fps (0.24 s)."""
    root = tmp_path / "epic"
    ann = root / "epic-kitchens-100-annotations"
    write_ek_classes(ann)
    (ann / "EPIC_100_train.csv").write_text(EK_HEADER + ek_row("P01_01_0", "P01", "P01_01", 0.00, 0.12, 0, 1)
                                            + ek_row("P01_01_1", "P01", "P01_01", 0.04, 0.20, 2, 3)
                                            + ek_row("P01_02_0", "P01", "P01_02", 0.04, 0.16, 1, 0)  # corrupt
                                            + ek_row("P02_01_0", "P02", "P02_01", 0.04, 0.16, 1, 0)  # missing
                                            + ek_row("P03_01_0", "P03", "P03_01", 0.04, 0.16, 1, 0)  # zero bytes
                                            + ek_row("P01_01_2", "P01", "P01_01", 0.04, 0.16, 5, 0))  # verb 5: skipped
    (ann / "EPIC_100_validation.csv").write_text(EK_HEADER + ek_row("P04_01_0", "P04", "P04_01", 0.0, 0.24, 1, 2))
    make_video(root / "P01/videos/P01_01.MP4")
    make_video(root / "P01/videos/P01_02.MP4", "corrupt")
    make_video(root / "P03/videos/P03_01.MP4", "empty")
    make_video(root / "P04/videos/P04_01.MP4")
    return root


def test_ek100_segments_with_verb_and_noun(ek100, tmp_path):
    out = tmp_path / "out"
    report = run("ek100", ek100, out)
    assert (out / "classes.txt").read_text().splitlines() == ["take", "put", "wash"]
    assert (out / "classes-verb.txt").read_text().splitlines() == ["take", "put", "wash"]
    assert (out / "classes-noun.txt").read_text().splitlines() == ["tap", "plate", "knife", "cup"]
    train = rows(out, "train")
    assert list(train[0]) == ["path", "label", "verb", "noun", "num_frames", "fps", "start_frame", "stop_frame"]
    assert [(r["path"], r["label"], r["verb"], r["noun"], r["start_frame"], r["stop_frame"], r["num_frames"])
            for r in train] == [("P01/videos/P01_01.MP4", "0", "0", "1", "0", "2", "6"),  # 0.00-0.12 s at 25 fps
                                ("P01/videos/P01_01.MP4", "2", "2", "3", "1", "4", "6")]
    assert [(r["path"], r["verb"], r["noun"]) for r in rows(out, "val")] == [("P04/videos/P04_01.MP4", "1", "2")]
    t = report["splits"]["train"]
    assert (t["indexed"], t["videos"], t["missing"], t["unreadable"], t["skipped"]) == (5, 2, 1, 2, 1)
    assert report["classes"] == {"label": 3, "verb": 3, "noun": 4}
    samples = PreparedDataset.open(out).samples("train", heads={"verb": 3, "noun": 4})
    assert (samples[1].labels, samples[1].start_frame, samples[1].stop_frame) == ({"verb": 2, "noun": 3}, 1, 4)


# EPIC's frame rates; start_frame/stop_frame of the CSV count at 60 fps for all of them.
EK_RATES = {"P10_01": Fraction(30000, 1001), "P10_02": Fraction(48000, 1001), "P10_03": Fraction(60000, 1001),
            "P10_04": Fraction(90)}
EK_SEGMENTS = [(1.50, 2.25), (2.40, 2.95)]


def test_ek100_segments_are_placed_by_timestamp_at_each_videos_frame_rate(tmp_path):
    root = tmp_path / "epic"
    write_ek_classes(root)
    noise = np.random.default_rng(0).integers(0, 256, (270, 32, 32, 3), dtype=np.uint8)
    train, n = EK_HEADER, 0
    for video, rate in EK_RATES.items():  # 3 s of each
        write_video(root / "P10" / "videos" / f"{video}.MP4", noise[:int(3 * rate)], fps=rate)
        for start, stop in EK_SEGMENTS:
            train += ek_row(f"{video}_{n}", "P10", video, start, stop, n % 3, n % 4)
            n += 1
    train += ek_row("P10_04_late", "P10", "P10_04", 3.50, 4.00, 0, 0)  # after the video's end
    (root / "EPIC_100_train.csv").write_text(train)
    (root / "EPIC_100_validation.csv").write_text(EK_HEADER + ek_row("P10_01_v", "P10", "P10_01", 0.5, 1.0, 1, 2))
    out = tmp_path / "out"
    report = run("ek100", root, out)

    samples = PreparedDataset.open(out).samples("train", heads={"verb": 3, "noun": 4})
    assert len(samples) == 8
    data = DataConfig(sampling="uniform", num_frames=8)
    for sample, (start, stop) in zip(samples, EK_SEGMENTS * 4):
        rate = EK_RATES[sample.path.stem]
        assert sample.fps == pytest.approx(float(rate), rel=1e-6)  # the probe keeps 6 decimals
        with av.open(str(sample.path)) as container:  # when each frame is on screen, as the file says
            shown = [float(frame.time) for frame in container.decode(video=0)]
        assert sample.num_frames == len(shown) == int(3 * rate)
        first, last = sample.start_frame, sample.stop_frame
        period = float(1 / rate)  # frame i is on screen from shown[i] for one period
        assert shown[first] <= start < shown[first] + period, (sample.path.name, start, first)
        assert shown[last] < stop <= shown[last] + period + 1e-9, (sample.path.name, stop, last)
        for seed in range(10):
            picked = clip_indices(data, sample.num_frames, np.random.default_rng(seed), 1, first, last)
            assert first <= picked.min() and picked.max() <= last
        views = clip_indices(data, sample.num_frames, None, 3, first, last)
        assert all(start - period <= shown[i] < stop for i in views.reshape(-1))
    assert report["splits"]["train"]["skipped_rows"] == [{
        "where": f"{root / 'EPIC_100_train.csv'}:10",
        "reason": "segment starts at 3.50 s, after the end of P10/videos/P10_04.MP4 (270 frames at 90.00 fps)"}]


def test_ek100_malformed_timestamp_names_file_and_line(ek100, tmp_path):
    path = ek100 / "epic-kitchens-100-annotations" / "EPIC_100_train.csv"
    path.write_text(path.read_text().replace("00:00:00.20", "0:0:0.2", 1))
    with pytest.raises(DataError, match=f"{path}:3: stop_timestamp must read HH:MM:SS.ss like 00:00:48.30, "
                                        "got '0:0:0.2'"):
        run("ek100", ek100, tmp_path / "out")


# -- folder and csv --------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path, make_video) -> Path:
    root = tmp_path / "mine"
    for cls, n in (("cats", 10), ("dogs", 10), ("fish", 5)):
        for i in range(n):
            make_video(root / cls / f"{cls}{i}.mp4")
    make_video(root / "dogs/bad.webm", "corrupt")
    make_video(root / "fish/empty.avi", "empty")
    (root / "fish" / "notes.txt").write_text("not a video")
    return root


def test_folder_split_is_stratified_and_seeded(folder, tmp_path):
    from stadapt.data.indexers import folder as folder_indexer

    index = folder_indexer.index(folder, IndexOptions(val_fraction=0.2, seed=1))
    assert index.classes["label"] == ["cats", "dogs", "fish"]
    per_class = {split: [c.labels["label"] for c in index.splits[split]] for split in ("train", "val")}
    # 20% of 10, 11 (with bad.webm) and 6 (with empty.avi) videos, rounded
    assert [per_class["val"].count(label) for label in range(3)] == [2, 2, 1]
    assert [per_class["train"].count(label) for label in range(3)] == [8, 9, 5]

    report = run("folder", folder, tmp_path / "a", seed=1)
    run("folder", folder, tmp_path / "b", seed=1)
    run("folder", folder, tmp_path / "c", seed=2)
    val = [r["path"] for r in rows(tmp_path / "a", "val")]
    assert val == [r["path"] for r in rows(tmp_path / "b", "val")]
    assert val != [r["path"] for r in rows(tmp_path / "c", "val")]
    listed = {p["path"] for s in ("train", "val") for p in report["splits"][s]["problems"]}
    assert listed == {"dogs/bad.webm", "fish/empty.avi"}
    assert report["splits"]["train"]["indexed"] + report["splits"]["val"]["indexed"] == 27


def test_csv_lists_with_names_and_indices(tmp_path, make_video):
    root = tmp_path / "lists"
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        make_video(root / "clips" / name)
    make_video(root / "clips/bad.mp4", "corrupt")
    make_video(root / "clips/zero.mp4", "empty")
    (root / "classes.txt").write_text("jump\nrun\n")
    (root / "train.csv").write_text("path,label\nclips/a.mp4,jump\nclips/b.mp4,1\nclips/bad.mp4,run\n"
                                    "clips/zero.mp4,run\nclips/gone.mp4,run\nclips/c.mp4,swim\n../escape.mp4,run\n")
    (root / "val.csv").write_text(f"path,label\n{root / 'clips/d.mp4'},0\n")
    out = tmp_path / "out"
    report = run("csv", root, out)
    assert {r["path"]: r["label"] for r in rows(out, "train")} == {"clips/a.mp4": "0", "clips/b.mp4": "1"}
    assert rows(out, "val")[0]["path"] == str(root / "clips/d.mp4")
    t = report["splits"]["train"]
    assert (t["indexed"], t["missing"], t["unreadable"], t["skipped"]) == (5, 1, 2, 2)
    assert [s["where"] for s in t["skipped_rows"]] == [f"{root / 'train.csv'}:7", f"{root / 'train.csv'}:8"]


def test_csv_refuses_to_overwrite_its_input(tmp_path, make_video):
    make_video(tmp_path / "a.mp4")
    (tmp_path / "train.csv").write_text("path,label\na.mp4,x\n")
    (tmp_path / "val.csv").write_text("path,label\na.mp4,x\n")
    with pytest.raises(Exception, match="would overwrite"):
        run("csv", tmp_path, tmp_path)
    assert (tmp_path / "train.csv").read_text() == "path,label\na.mp4,x\n"


def test_synthetic_is_generated_then_split_like_a_folder(tmp_path):
    pytest.importorskip("stadapt.data.synthetic")
    from stadapt.data.prepare import SyntheticOptions

    out = tmp_path / "out"
    report = prepare(PrepareOptions("synthetic", tmp_path / "videos", out,
                                    synthetic=SyntheticOptions(classes=2, videos_per_class=5, frames=8, size=(32, 32))))
    assert report["splits"]["train"]["videos"] == 8 and report["splits"]["val"]["videos"] == 2
    assert len((out / "classes.txt").read_text().splitlines()) == 2


def test_decode_writes_the_store(folder, tmp_path):
    pytest.importorskip("stadapt.data.store")
    report = prepare(PrepareOptions("folder", folder, tmp_path / "out", decode=True))
    assert report["store"]["videos"] > 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["store"] == report["store"]


def test_synthetic_and_decode_are_called_with_the_options_given(tmp_path, make_video, monkeypatch):
    """Stand-ins for the video generator and the frame store check what prepare passes them."""
    import sys
    import types

    from stadapt.data.prepare import SyntheticOptions

    calls = {}

    def generate_synthetic(videos_dir, classes=8, videos_per_class=12, frames=32, size=(80, 64), seed=0, fps=25,
                           on_video=None):
        calls["generate"] = (videos_dir, classes, videos_per_class, frames, size, seed)
        videos = []
        for c in range(classes):
            for i in range(videos_per_class):
                path = make_video(Path(videos_dir) / f"class{c}" / f"{i}.mp4")
                if on_video:
                    on_video(path)
                videos.append((path, f"class{c}"))
        return videos

    def write_store(prepared_root, samples, short_side=256, workers=1, on_video=None, codec="jpeg"):
        calls["store"] = (prepared_root, sorted(s.path.name for s in samples), workers, codec)
        return {"videos": len(samples), "frames": 6 * len(samples), "bytes": 1, "seconds": 0.0}

    def store_encoding(codec="jpeg"):
        calls["checked"] = codec
        return {}

    monkeypatch.setitem(sys.modules, "stadapt.data.synthetic",
                        types.SimpleNamespace(generate_synthetic=generate_synthetic))
    monkeypatch.setitem(sys.modules, "stadapt.data.store",
                        types.SimpleNamespace(write_store=write_store, store_encoding=store_encoding))
    out = tmp_path / "out"
    report = prepare(PrepareOptions("synthetic", tmp_path / "videos", out, decode=True, workers=1, store="h264",
                                    index=IndexOptions(val_fraction=0.25, seed=3),
                                    synthetic=SyntheticOptions(classes=2, videos_per_class=4, frames=8, size=(32, 16))))
    assert calls["generate"] == (tmp_path / "videos", 2, 4, 8, (32, 16), 3)
    assert (report["splits"]["train"]["videos"], report["splits"]["val"]["videos"]) == (6, 2)
    assert calls["store"][0] == out and len(calls["store"][1]) == 8
    assert calls["checked"] == calls["store"][3] == "h264"  # checked before anything was written, then used
    assert report["store"]["videos"] == 8 and json.loads((out / "report.json").read_text())["store"]["videos"] == 8
    assert all(r["path"].startswith(("class0/", "class1/")) for r in rows(out, "train"))
