"""Kinetics-400 as distributed: `train.csv` / `val.csv` and folders `train/`, `val/`.

The annotation files go by several names (ANNOTATION_NAMES), in ROOT or `annotations/`;
the test split has no labels and is not read.

Rows read `label,youtube_id,time_start,time_end,split` (some releases add `is_cc`); labels
are quoted when they hold commas and may hold spaces and parentheses. Videos are named
`{youtube_id}_{time_start:06d}_{time_end:06d}` with .mp4, .mkv or .webm, flat or in one
folder per class. Every copy of Kinetics misses videos taken down from YouTube, so missing
files are expected: they are counted and listed, never fatal.
"""

from __future__ import annotations

import os
from pathlib import Path

from stadapt.data.indexers.base import (
    Candidate,
    Index,
    IndexOptions,
    Skipped,
    csv_rows,
    find_dir,
    find_file,
    parse_int,
    read_text,
    safe_name,
)

ANNOTATION_FOLDERS = ("annotations", "labels", "kinetics400", "kinetics-400", "k400")
# The current release says train.csv; the 2017 release and mmaction2's download tools
# kinetics_train.csv; crawler copies kinetics-400_train.csv and the like.
_PREFIXES = ("", "kinetics_", "kinetics-400_", "kinetics400_", "kinetics_400_")
ANNOTATION_NAMES = {
    split: tuple(f"{prefix}{word}.csv" for prefix in _PREFIXES for word in words)
    for split, words in (("train", ("train",)), ("val", ("val", "validate", "validation")))
}
VIDEO_FOLDERS = {
    "train": ("train", "videos/train", "train_256", "videos_train"),
    "val": ("val", "validate", "validation", "videos/val", "val_256", "videos_val"),
}
SUFFIXES = (".mp4", ".mkv", ".webm")
COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def parse_annotations(text: str, source: str) -> tuple[list[tuple[str, str]], list[Skipped]]:
    """CSV text → (class name, video stem) per usable row, and the rows skipped."""
    rows, skipped, first_seen = [], [], {}
    for number, row in csv_rows(text, source, COLUMNS):
        where = f"{source}:{number}"
        start = parse_int(row["time_start"], where, "time_start")
        end = parse_int(row["time_end"], where, "time_end")
        youtube_id, label = row["youtube_id"], row["label"]
        if not label:
            skipped.append(Skipped(where, "no label"))
            continue
        if not safe_name(youtube_id):
            skipped.append(Skipped(where, f"youtube_id {youtube_id!r} cannot be a file name"))
            continue
        stem = f"{youtube_id}_{start:06d}_{end:06d}"
        if stem in first_seen:
            skipped.append(Skipped(where, f"duplicate of line {first_seen[stem]}"))
            continue
        first_seen[stem] = number
        rows.append((label, stem))
    return rows, skipped


def scan_videos(folder: Path) -> dict[str, Path]:
    """Video stem → path relative to `folder`, flat or one class folder deep."""
    found: dict[str, Path] = {}

    def visit(directory: Path, prefix: Path, depth: int) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = Path(entry.name)
                if entry.is_dir():
                    if depth == 0:
                        visit(Path(entry.path), prefix / entry.name, 1)
                elif name.suffix.lower() in SUFFIXES:
                    found.setdefault(name.stem, prefix / entry.name)

    visit(folder, Path(), 0)
    return found


def index(root: Path, options: IndexOptions) -> Index:
    parsed: dict[str, list[tuple[str, str]]] = {}
    result = Index(root, {}, {})
    for split in ("train", "val"):
        source = find_file(root, ANNOTATION_NAMES[split], ANNOTATION_FOLDERS, f"Kinetics-400 {split} annotations")
        parsed[split], result.skipped[split] = parse_annotations(read_text(source), str(source))
        result.sources.append(source)
    classes = sorted({label for rows in parsed.values() for label, _ in rows})
    label_of = {name: i for i, name in enumerate(classes)}
    result.classes["label"] = classes
    for split, rows in parsed.items():
        folder = find_dir(root, VIDEO_FOLDERS[split])
        videos = scan_videos(folder) if folder else {}
        base = (folder or root / VIDEO_FOLDERS[split][0]).relative_to(root)
        result.splits[split] = [
            Candidate(base / videos.get(stem, Path(stem + SUFFIXES[0])), {"label": label_of[label]})
            for label, stem in rows
        ]
    return result
