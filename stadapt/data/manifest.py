"""Prepared data sets on disk: manifests, class lists and report.json.

A prepared directory (what `stadapt prepare` writes and `data.root` points at) holds
- classes.txt: one class name per line (the `label` head); classes-<head>.txt for any
  further label set (EPIC-Kitchens: classes-verb.txt, classes-noun.txt);
- train.csv, val.csv: UTF-8 CSV with a header, columns `path` (relative to the report's
  `videos_root`, or absolute) and `label`, plus optional `num_frames`, `fps`,
  `start_frame`, `stop_frame` and one column per extra head (`verb`, `noun`);
- report.json: what was indexed, missing and unreadable per split, and where the videos are.
All of it is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from stadapt.errors import DataError, not_utf8
from stadapt.fileio import atomic_write_text

SPLITS = ("train", "val")
OPTIONAL_INT_COLUMNS = ("num_frames", "start_frame", "stop_frame")


@dataclass
class Sample:
    """One video (or segment of one) with its labels, as a manifest row says."""

    path: Path
    labels: dict[str, int]
    num_frames: Optional[int] = None
    fps: Optional[float] = None
    start_frame: Optional[int] = None
    stop_frame: Optional[int] = None


def classes_file(root: Path, head: str = "label") -> Path:
    return root / ("classes.txt" if head == "label" else f"classes-{head}.txt")


def classes_text(names: list[str]) -> str:
    """classes.txt content: one name a line, so a name may not hold a line break."""
    for name in names:
        if "\n" in name or "\r" in name:
            raise DataError(f"class name {name!r} contains a line break")
    return "".join(f"{n}\n" for n in names)


def write_classes(root: Path, names: list[str], head: str = "label") -> None:
    atomic_write_text(classes_file(root, head), classes_text(names))


def read_classes(root: Path, head: str = "label") -> list[str]:
    path = classes_file(root, head)
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run `stadapt prepare` first)") from None
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    names = [n for n in names if n.strip()]
    if not names:
        raise DataError(f"{path}: no class names")
    return names


def manifest_text(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """Render rows (dicts) as a manifest CSV with `columns` as the header."""
    for required in ("path", "label"):
        if required not in columns:
            raise ValueError(f"manifest columns must include {required!r}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    # The csv module quotes a field holding "\n" but not one holding a lone "\r" (a legal file
    # name character), which a reader takes for a line end: quote every field of such a row.
    quoted = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n",
                            quoting=csv.QUOTE_ALL)
    writer.writeheader()
    for row in rows:
        values = {k: ("" if row.get(k) is None else row.get(k)) for k in columns}
        (quoted if any("\r" in str(v) for v in values.values()) else writer).writerow(values)
    return buf.getvalue()


def write_manifest(path: Path, rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    """Write rows (dicts) as a CSV with `columns` as the header, atomically."""
    atomic_write_text(path, manifest_text(rows, columns))


def read_manifest(path: Path, videos_root: Path, heads: dict[str, int] | None = None) -> list[Sample]:
    """Parse a manifest; a malformed row is one DataError naming the file and line."""
    try:
        text = path.read_bytes().decode("utf-8")  # not read_text: a "\r" inside a quoted path must stay
    except FileNotFoundError:
        raise DataError(f"{path}: missing (run `stadapt prepare` first)") from None
    except UnicodeDecodeError as exc:
        raise not_utf8(path, exc) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = _csv_checked(lambda: reader.fieldnames, reader, path) or []
    for required in ("path", "label"):
        if required not in columns:
            has = ", ".join(map(repr, columns)) or "nothing"
            raise DataError(f"{path}: header lacks the column {required!r} (has: {has})")
    head_names = list(heads) if heads else ["label"]
    for head in head_names:
        if head not in columns:
            raise DataError(f"{path}: no column {head!r} for the classifier head of that name")
    samples = []
    while (row := _csv_checked(lambda: next(reader, None), reader, path)) is not None:
        line = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise DataError(f"{path}:{line}: expected {len(columns)} fields")
        try:
            labels = {h: int(row[h]) for h in head_names}
        except ValueError:
            given = ", ".join(row[h] for h in head_names)
            raise DataError(f"{path}:{line}: label is not an integer ({given})") from None
        for h, value in labels.items():
            limit = (heads or {}).get(h)
            if value < 0 or (limit is not None and value >= limit):
                raise DataError(f"{path}:{line}: {h} {value} is outside 0..{(limit or 1) - 1}")
        raw_path = row["path"]
        if not raw_path:
            raise DataError(f"{path}:{line}: empty path")
        video = Path(raw_path)
        if not video.is_absolute():
            if ".." in video.parts:
                raise DataError(f"{path}:{line}: path {raw_path!r} escapes the videos root")
            video = videos_root / video
        try:
            ints = {c: int(row[c]) for c in OPTIONAL_INT_COLUMNS if row.get(c) not in (None, "")}
            fps = float(row["fps"]) if row.get("fps") not in (None, "") else None
        except ValueError:
            raise DataError(f"{path}:{line}: num_frames, fps, start_frame and stop_frame must be numbers") from None
        samples.append(Sample(video, labels, fps=fps, **ints))
    return samples


def _csv_checked(read: Any, reader: csv.DictReader, path: Path) -> Any:
    try:
        return read()
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        # the line failing is not counted yet
        raise DataError(f"{path}:{reader.line_num + 1}: not valid CSV ({exc})") from None


@dataclass
class PreparedDataset:
    """A directory written by `stadapt prepare`."""

    root: Path
    report: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> "PreparedDataset":
        root = Path(root)
        report_path = root / "report.json"
        if not root.is_dir():
            raise DataError(f"data.root = {str(root)!r} is not a directory "
                            f"(run `stadapt prepare DATASET ROOT --out {root}`)")
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{report_path}: missing (run `stadapt prepare` first)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{report_path}: not valid JSON ({exc})") from None
        return cls(root, report)

    @property
    def videos_root(self) -> Path:
        return Path(self.report.get("videos_root", self.root))

    def classes(self, head: str = "label") -> list[str]:
        return read_classes(self.root, head)

    def samples(self, split: str, heads: dict[str, int] | None = None) -> list[Sample]:
        return read_manifest(self.root / f"{split}.csv", self.videos_root, heads)


def report_text(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def write_report(root: Path, report: dict[str, Any]) -> None:
    atomic_write_text(root / "report.json", report_text(report))
