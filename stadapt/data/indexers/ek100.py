"""EPIC-Kitchens-100 as distributed: action segments of long videos, two labels each.

`EPIC_100_train.csv` / `EPIC_100_validation.csv` list segments
`start_timestamp..stop_timestamp` of `{participant_id}/videos/{video_id}.MP4` with a
`verb_class` and a `noun_class`, indices into `EPIC_100_verb_classes.csv` (97) and
`EPIC_100_noun_classes.csv` (300). The main `label` head is the verb; `verb` and `noun` are
both written so that training can use two classifiers and report action accuracy.

The CSV's `start_frame` / `stop_frame` are not read: they count frames at one rate, while
the videos run at 29.97, 47.95, 59.94 or 90 fps. `prepare` places each segment by its
timestamps and the video's probed frame rate.
"""

from __future__ import annotations

import re
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
from stadapt.errors import DataError

ANNOTATION_FOLDERS = ("epic-kitchens-100-annotations", "annotations", "labels")
NAMES = {"train": "EPIC_100_train.csv", "val": "EPIC_100_validation.csv",
         "verb": "EPIC_100_verb_classes.csv", "noun": "EPIC_100_noun_classes.csv"}
VIDEO_FOLDERS = ("EPIC-KITCHENS", "EPIC-KITCHENS-100")
SEGMENT_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp",
                   "verb_class", "noun_class")
_TIMESTAMP = re.compile(r"([0-9]+):([0-5][0-9]):([0-5][0-9](?:\.[0-9]+)?)")


def parse_classes(text: str, source: str) -> list[str]:
    """A class CSV (`id,key,...`) → names in id order; the ids must run 0..N-1."""
    by_id: dict[int, str] = {}
    for number, row in csv_rows(text, source, ("id", "key")):
        class_id = parse_int(row["id"], f"{source}:{number}", "id")
        if class_id in by_id:
            raise DataError(f"{source}:{number}: class id {class_id} is listed twice")
        by_id[class_id] = row["key"]
    if not by_id or sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{source}: class ids must run 0..N-1 without gaps")
    return [by_id[i] for i in range(len(by_id))]


def parse_timestamp(text: str, where: str, what: str) -> float:
    """`HH:MM:SS.ss` (EPIC's `00:00:48.30`) → seconds, or a DataError naming where and what."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if not match:
        raise DataError(f"{where}: {what} must read HH:MM:SS.ss like 00:00:48.30, got {text!r}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_segments(text: str, source: str, num_verbs: int, num_nouns: int
                   ) -> tuple[list[tuple[str, Path, tuple[float, float], int, int]], list[Skipped]]:
    """Segment CSV → (file:line, video path without suffix, (start, stop) in seconds, verb, noun)
    per usable row."""
    rows, skipped, seen = [], [], set()
    for number, row in csv_rows(text, source, SEGMENT_COLUMNS):
        where = f"{source}:{number}"
        start = parse_timestamp(row["start_timestamp"], where, "start_timestamp")
        stop = parse_timestamp(row["stop_timestamp"], where, "stop_timestamp")
        verb = parse_int(row["verb_class"], where, "verb_class")
        noun = parse_int(row["noun_class"], where, "noun_class")
        participant, video_id = row["participant_id"], row["video_id"]
        if verb >= num_verbs or noun >= num_nouns:
            skipped.append(Skipped(where, f"verb {verb} / noun {noun} outside the {num_verbs} verbs / "
                                          f"{num_nouns} nouns"))
        elif stop < start:
            skipped.append(Skipped(where, f"stop_timestamp {row['stop_timestamp']} comes before start_timestamp "
                                          f"{row['start_timestamp']}"))
        elif not (safe_name(participant) and safe_name(video_id)):
            skipped.append(Skipped(where, f"participant {participant!r} / video {video_id!r} cannot be file names"))
        elif row["narration_id"] in seen:
            skipped.append(Skipped(where, f"narration_id {row['narration_id']} is listed twice"))
        else:
            seen.add(row["narration_id"])
            rows.append((where, Path(participant) / "videos" / video_id, (start, stop), verb, noun))
    return rows, skipped


def index(root: Path, options: IndexOptions) -> Index:
    train_file = find_file(root, [NAMES["train"]], ANNOTATION_FOLDERS, "EPIC-Kitchens-100 annotations")
    folder = train_file.parent
    files = {key: find_file(folder, [NAMES[key]], (), "EPIC-Kitchens-100 annotations")
             for key in ("val", "verb", "noun")}
    verbs = parse_classes(read_text(files["verb"]), str(files["verb"]))
    nouns = parse_classes(read_text(files["noun"]), str(files["noun"]))
    videos_root = find_dir(root, VIDEO_FOLDERS) or root
    result = Index(videos_root, {"label": verbs, "verb": verbs, "noun": nouns}, {},
                   sources=[train_file, *files.values()])
    files_of: dict[Path, Path] = {}
    for split, source in (("train", train_file), ("val", files["val"])):
        rows, result.skipped[split] = parse_segments(read_text(source), str(source), len(verbs), len(nouns))
        candidates = []
        for where, stem, segment, verb, noun in rows:
            if stem not in files_of:
                files_of[stem] = _video_file(videos_root, stem)
            candidates.append(Candidate(files_of[stem], {"label": verb, "verb": verb, "noun": noun},
                                        segment=segment, where=where))
        result.splits[split] = candidates
    return result


def _video_file(videos_root: Path, stem: Path) -> Path:
    """`stem`.MP4 as distributed, or `stem`.mp4 where a copy renamed it."""
    upper, lower = stem.parent / f"{stem.name}.MP4", stem.parent / f"{stem.name}.mp4"
    return lower if not (videos_root / upper).exists() and (videos_root / lower).exists() else upper
