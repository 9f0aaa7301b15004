"""Something-Something-v2 as distributed: JSON annotations and `{id}.webm` videos.

`labels.json` maps a template without brackets to a class id given as a string; entries of
`train.json` / `validation.json` carry the template with brackets ("Putting [something] on
[something]"), so the class is the template with the brackets taken out. Both published
namings of the files are accepted: `something-something-v2-train.json` and
`labels/train.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stadapt.data.indexers.base import (
    Candidate,
    Index,
    IndexOptions,
    Skipped,
    find_dir,
    find_file,
    read_text,
    safe_name,
)
from stadapt.errors import DataError

ANNOTATION_FOLDERS = ("labels", "annotations")
NAMES = {
    "labels": ("something-something-v2-labels.json", "labels.json"),
    "train": ("something-something-v2-train.json", "train.json"),
    "val": ("something-something-v2-validation.json", "validation.json"),
}
VIDEO_FOLDERS = ("20bn-something-something-v2", "videos")


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{source}: JSON nested too deeply") from None


def template_class(template: str) -> str:
    """'Putting [something] on [something]' → 'Putting something on something'."""
    return template.replace("[", "").replace("]", "")


def parse_labels(text: str, source: str) -> list[str]:
    """labels.json → class names in id order; the ids must be "0".."N-1"."""
    data = _load_json(text, source)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{source}: expected an object mapping templates to class ids")
    by_id: dict[int, str] = {}
    for name, value in data.items():
        try:
            class_id = int(str(value), 10)
        except ValueError:
            raise DataError(f"{source}: class id of {name!r} is {value!r}, not a number") from None
        if class_id in by_id:
            raise DataError(f"{source}: class id {class_id} is given to {by_id[class_id]!r} and {name!r}")
        by_id[class_id] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{source}: class ids must run 0..{len(by_id) - 1} without gaps")
    return [by_id[i] for i in range(len(by_id))]


def parse_entries(text: str, source: str, classes: list[str]) -> tuple[list[tuple[str, int]], list[Skipped]]:
    """train/validation.json → (video id, label) per usable entry, and the entries skipped."""
    data = _load_json(text, source)
    if not isinstance(data, list):
        raise DataError(f"{source}: expected a list of entries")
    label_of = {name: i for i, name in enumerate(classes)}
    rows, skipped, seen = [], [], set()
    for number, entry in enumerate(data, start=1):
        where = f"{source}:entry {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)) \
                or not isinstance(entry.get("template"), str):
            raise DataError(f"{where}: expected an object with an 'id' and a 'template'")
        video_id, template = str(entry["id"]), entry["template"]
        label = label_of.get(template_class(template))
        if label is None:
            skipped.append(Skipped(where, f"template {template!r} is not in labels.json"))
        elif not safe_name(video_id):
            skipped.append(Skipped(where, f"id {video_id!r} cannot be a file name"))
        elif video_id in seen:
            skipped.append(Skipped(where, f"id {video_id} is listed twice"))
        else:
            seen.add(video_id)
            rows.append((video_id, label))
    return rows, skipped


def index(root: Path, options: IndexOptions) -> Index:
    labels_file = find_file(root, NAMES["labels"], ANNOTATION_FOLDERS, "Something-Something-v2 labels")
    classes = parse_labels(read_text(labels_file), str(labels_file))
    videos_root = find_dir(root, VIDEO_FOLDERS) or root
    result = Index(videos_root, {"label": classes}, {}, sources=[labels_file])
    for split in ("train", "val"):
        # The entries sit next to the labels file, named the same way.
        source = find_file(labels_file.parent, NAMES[split], (), f"Something-Something-v2 {split} entries")
        rows, result.skipped[split] = parse_entries(read_text(source), str(source), classes)
        result.splits[split] = [Candidate(Path(f"{video_id}.webm"), {"label": label}) for video_id, label in rows]
        result.sources.append(source)
    return result
