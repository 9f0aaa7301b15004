"""HMDB-51 as distributed: `{class}/{name}.avi` and `testTrainMulti_7030_splits/`.

Each class has one file per split, `{class}_test_split{N}.txt`, whose lines `{name}.avi ID`
put the video in training (1), testing (2, our `val`) or neither (0). Classes are the
class names sorted; the class set comes from the split files. The class folders are in
ROOT or in one folder inside it (`hmdb51_org/` as the archive unpacks, or any other name),
whichever holds most of them; file names hold `[ ] ! # ( ) ;`.
"""

from __future__ import annotations

import re
from pathlib import Path

from stadapt.data.indexers.base import (
    Candidate,
    Index,
    IndexOptions,
    Skipped,
    lines,
    parse_int,
    read_text,
    safe_name,
    search_bases,
)
from stadapt.errors import DataError

SPLIT_FOLDERS = ("testTrainMulti_7030_splits", "test_train_splits", "splits", "annotations")
_SPLIT_FILE = re.compile(r"(?P<name>.+)_test_split(?P<split>[123])\.txt")
ROLE = {1: "train", 2: "val"}


def parse_split_file(text: str, source: str) -> list[tuple[int, str, int]]:
    """Lines `{name}.avi ID` → (line number, file name, ID) with ID in 0, 1, 2."""
    rows = []
    for number, line in lines(text):
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{source}:{number}: expected 'NAME.avi ID', got {line!r}")
        role = parse_int(fields[1], f"{source}:{number}", "the split id")
        if role not in (0, 1, 2):
            raise DataError(f"{source}:{number}: split id must be 0 (unused), 1 (train) or 2 (test), got {role}")
        rows.append((number, fields[0], role))
    return rows


def find_split_files(root: Path, split: int) -> dict[str, Path]:
    """Class name → its split file for split `split`, from the first folder that has them."""
    for base in search_bases(root, SPLIT_FOLDERS):
        try:
            files = sorted(base.glob(f"*_test_split{split}.txt"))
        except OSError:
            continue
        found = {m["name"]: f for f in files if (m := _SPLIT_FILE.fullmatch(f.name)) and f.is_file()}
        if found:
            return found
    raise DataError(f"HMDB-51 split {split}: no {{class}}_test_split{split}.txt in {root} (looked there, in "
                    f"{', '.join(f + '/' for f in SPLIT_FOLDERS)} and one folder deeper)")


def find_videos_root(root: Path, classes: list[str]) -> Path:
    """ROOT or the folder directly in it (hmdb51_org/, or whatever the archive unpacked into)
    that holds the most of the class folders; ROOT when none holds more."""
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        folders = []
    return max([root, *folders], key=lambda base: sum((base / name).is_dir() for name in classes))


def index(root: Path, options: IndexOptions) -> Index:
    split_files = find_split_files(root, options.split)
    classes = sorted(split_files)
    videos_root = find_videos_root(root, classes)
    result = Index(videos_root, {"label": classes}, {"train": [], "val": []},
                   skipped={"train": [], "val": []}, sources=list(split_files.values()))
    for label, name in enumerate(classes):
        source = split_files[name]
        seen: set[str] = set()
        for number, file_name, role in parse_split_file(read_text(source), str(source)):
            if role == 0:
                continue
            split, where = ROLE[role], f"{source}:{number}"
            if not safe_name(file_name):
                result.skipped[split].append(Skipped(where, f"file name {file_name!r} leaves the class folder"))
            elif file_name in seen:
                result.skipped[split].append(Skipped(where, f"{file_name} is listed twice"))
            else:
                seen.add(file_name)
                result.splits[split].append(Candidate(Path(name) / file_name, {"label": label}))
    return result
