"""What every indexer produces, and the small helpers they share.

An indexer reads a data set's annotation files as distributed and turns them into
candidate samples per split (train, val) plus the class lists. It does not open videos:
`stadapt.data.prepare` checks which candidates exist and probes them.

Two kinds of bad input, handled differently on purpose:
- a line the parser cannot make sense of (wrong field count, a label that is not a number)
  means the file is not what we think it is: DataError naming `file:line`, stop;
- a well-formed row that cannot be used on its own (unknown class, duplicate id, a path
  that escapes ROOT) is skipped and listed in report.json, like a missing video.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Sequence

from stadapt.errors import DataError, not_utf8

_SAFE_NAME = re.compile(r"[^/\\\x00]+")


@dataclass(frozen=True)
class Candidate:
    """One sample an annotation file lists: a video (relative to the videos root, or
    absolute) and its label per head, optionally a segment of it.

    A segment is given in seconds: annotations number frames at one rate for all videos,
    while the videos have their own, which only probing tells (`segment_frames`).
    """

    path: Path
    labels: dict[str, int]
    segment: Optional[tuple[float, float]] = None  # start, stop in seconds
    where: str = ""  # file:line of the annotation, for the report


def segment_frames(segment: tuple[float, float], fps: float) -> tuple[int, int]:
    """The 0-based frames (first, last, both included) shown during `segment` (seconds) of a
    video at `fps`: frame i is on screen from i/fps to (i+1)/fps."""
    tolerance = 1e-6  # 1.2 s × 25 fps is 30.000000000000004 in floating point
    start, stop = segment
    first = math.floor(start * fps + tolerance)
    last = math.ceil(stop * fps - tolerance) - 1
    return first, max(last, first)


@dataclass(frozen=True)
class Skipped:
    """A row left out, with where it was (`file:line`) and why."""

    where: str
    reason: str


@dataclass
class Index:
    """A data set as its annotations describe it, before any video is opened.

    `classes` maps each classifier head to its class names; "label" is the main head
    (for EPIC-Kitchens it is the verb, and "verb" and "noun" are listed as well).
    """

    videos_root: Path
    classes: dict[str, list[str]]
    splits: dict[str, list[Candidate]]
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)  # annotation files read

    def skip(self, split: str, where: str, reason: str) -> None:
        self.skipped.setdefault(split, []).append(Skipped(where, reason))


@dataclass(frozen=True)
class IndexOptions:
    """The knobs some indexers need: the official split number, or how to split a folder."""

    split: int = 1
    val_fraction: float = 0.2
    seed: int = 0
    train_csv: Optional[Path] = None
    val_csv: Optional[Path] = None


def find_file(root: Path, names: Sequence[str], folders: Sequence[str], what: str) -> Path:
    """The first of `names` found in ROOT, in one of `folders` under it, or one level deeper.

    Users unpack archives in different ways (ROOT/annotations/train.csv,
    ROOT/kinetics400/train.csv, ...); this accepts the common ones and names them all when
    nothing is there.
    """
    for base in search_bases(root, folders):
        for name in names:
            if (base / name).is_file():
                return base / name
    where = f"{root}, its folders {', '.join(f + '/' for f in folders)}" if folders else str(root)
    raise DataError(f"{what}: found no {' or '.join(names)} in {where} or one folder deeper")


def find_dir(root: Path, folders: Sequence[str]) -> Optional[Path]:
    """The first existing folder among `folders` (relative to ROOT, "" = ROOT itself)."""
    for folder in folders:
        if (root / folder).is_dir():
            return root / folder
    return None


def search_bases(root: Path, folders: Sequence[str]) -> Iterator[Path]:
    """ROOT, then ROOT/folder, then each child folder of ROOT and child/folder."""
    yield root
    for folder in folders:
        yield root / folder
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield child
        for folder in folders:
            yield child / folder


def read_text(path: Path) -> str:
    """A whole annotation file as text (UTF-8, a byte-order mark tolerated)."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})") from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for each non-blank line; CRLF and LF alike."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if line:
            yield number, line


def csv_rows(text: str, source: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row of a CSV with a header that has `required`."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{source}:1: header lacks {', '.join(missing)} (expected {','.join(required)})")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DataError(f"{source}:{reader.line_num}: expected {len(header)} fields as in the header")
            if not any(v.strip() for v in row.values()):
                continue
            yield reader.line_num, {k: v.strip() for k, v in row.items()}
    except csv.Error as exc:
        # the failing line is not counted yet
        raise DataError(f"{source}:{reader.line_num + 1}: not valid CSV ({exc})") from None


def parse_int(value: str, where: str, what: str) -> int:
    """A non-negative integer field, or a DataError naming where and what."""
    value = value.strip()
    if not value.isascii() or not value.isdigit():
        raise DataError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return int(value)


def safe_relative(text: str) -> Optional[Path]:
    """`text` as a path inside ROOT, or None when it is empty, absolute or climbs out via '..'."""
    text = text.strip().replace("\\", "/")
    if not text or "\x00" in text:
        return None
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        return None
    return Path(*path.parts) if path.parts else None


def safe_name(text: str) -> bool:
    """True when `text` can be one path component (an id, a file name)."""
    return bool(_SAFE_NAME.fullmatch(text)) and text not in (".", "..")
