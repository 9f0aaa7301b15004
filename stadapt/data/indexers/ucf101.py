"""UCF-101 as distributed: `UCF-101/{Class}/v_{Class}_gXX_cYY.avi` and `ucfTrainTestlist/`.

`classInd.txt` numbers the classes from 1; `trainlist0N.txt` gives `Class/file.avi LABEL`
(1-based), `testlist0N.txt` gives the path only, so its class comes from the folder. The
lists ship with Windows line ends. `--split N` picks one of the three official splits.
"""

from __future__ import annotations

from pathlib import Path

from stadapt.data.indexers.base import (
    Candidate,
    Index,
    IndexOptions,
    Skipped,
    find_dir,
    find_file,
    lines,
    parse_int,
    read_text,
    safe_relative,
)
from stadapt.errors import DataError

ANNOTATION_FOLDERS = ("ucfTrainTestlist", "UCF-101/ucfTrainTestlist", "annotations", "splits", "labels")
VIDEO_FOLDERS = ("UCF-101", "UCF101", "videos")


def parse_class_index(text: str, source: str) -> list[str]:
    """classInd.txt → class names in label order (line `3 ApplyLipstick` is label 2)."""
    by_number: dict[int, str] = {}
    for number, line in lines(text):
        fields = line.split()
        if len(fields) != 2:
            raise DataError(f"{source}:{number}: expected 'INDEX CLASS', got {line!r}")
        index = parse_int(fields[0], f"{source}:{number}", "the class index")
        if index in by_number or fields[1] in by_number.values():
            raise DataError(f"{source}:{number}: class {fields[0]} {fields[1]} is listed twice")
        by_number[index] = fields[1]
    if not by_number:
        raise DataError(f"{source}: no classes listed")
    if sorted(by_number) != list(range(1, len(by_number) + 1)):
        raise DataError(f"{source}: class indices must run 1..{len(by_number)} without gaps")
    return [by_number[i] for i in range(1, len(by_number) + 1)]


def parse_split_list(text: str, source: str, classes: list[str]) -> tuple[list[Candidate], list[Skipped]]:
    """trainlist (`Class/file.avi LABEL`) or testlist (`Class/file.avi`) → candidates."""
    by_name = {name: i for i, name in enumerate(classes)}
    by_folded = {name.casefold(): i for i, name in enumerate(classes)}
    candidates, skipped, seen = [], [], set()
    for number, line in lines(text):
        where = f"{source}:{number}"
        fields = line.split()
        if len(fields) > 2:
            raise DataError(f"{where}: expected 'CLASS/FILE.avi [LABEL]', got {line!r}")
        path = safe_relative(fields[0])
        if path is None:
            skipped.append(Skipped(where, f"path {fields[0]!r} leaves the videos folder"))
            continue
        if len(fields) == 2:
            label = parse_int(fields[1], where, "the label") - 1
            if not 0 <= label < len(classes):
                skipped.append(Skipped(where, f"label {fields[1]} is not in classInd.txt (1..{len(classes)})"))
                continue
        else:
            folder = path.parts[0] if len(path.parts) > 1 else ""
            label = by_name.get(folder, by_folded.get(folder.casefold(), -1))
            if label < 0:
                skipped.append(Skipped(where, f"folder {folder!r} is not a class in classInd.txt"))
                continue
        if path in seen:
            skipped.append(Skipped(where, f"{fields[0]} is listed twice"))
            continue
        seen.add(path)
        candidates.append(Candidate(path, {"label": label}))
    return candidates, skipped


def index(root: Path, options: IndexOptions) -> Index:
    n = options.split
    class_file = find_file(root, ["classInd.txt"], ANNOTATION_FOLDERS, "UCF-101 class list")
    lists = class_file.parent
    classes = parse_class_index(read_text(class_file), str(class_file))
    videos_root = find_dir(root, VIDEO_FOLDERS) or root
    result = Index(videos_root, {"label": classes}, {}, sources=[class_file])
    for split, name in (("train", f"trainlist0{n}.txt"), ("val", f"testlist0{n}.txt")):
        list_file = find_file(lists, [name], [], f"UCF-101 split {n}")
        candidates, skipped = parse_split_list(read_text(list_file), str(list_file), classes)
        result.splits[split] = candidates
        result.skipped[split] = skipped
        result.sources.append(list_file)
    return result
