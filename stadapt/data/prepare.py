"""`stadapt prepare`: index a data set, probe its videos, write the prepared directory.

The steps: the data set's indexer reads its annotations (stadapt.data.indexers); every
listed video is checked for existence and probed once, in parallel, with a cache; then
classes.txt (plus classes-<head>.txt), train.csv, val.csv and report.json are written as
one set, so that an interrupted run leaves either the previous complete set or the new one.
With `decode`, the pre-decoded store for fast loading is written afterwards. UCF-101 and
HMDB-51 can be prepared for all three official splits at once (`prepare_splits`): OUT/split1,
OUT/split2 and OUT/split3, each a complete prepared directory, the videos probed only once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from stadapt.data.indexers import INDEXERS, Candidate, Index, IndexOptions, Skipped
from stadapt.data.indexers.base import segment_frames
from stadapt.data.indexers.folder import index_files
from stadapt.data.manifest import SPLITS, PreparedDataset, classes_file, classes_text, manifest_text, report_text
from stadapt.data.probe import CACHE_NAME, ProbeCache, UnreadableVideo, VideoInfo, probe_many
from stadapt.errors import BusyError, DataError
from stadapt.fileio import FileLock, atomic_write_text, atomic_write_texts

DATASETS = (*INDEXERS, "synthetic")
LOCK_NAME = ".prepare.lock"
SPLIT_DATASETS = ("ucf101", "hmdb51")  # the data sets with three official splits
OFFICIAL_SPLITS = (1, 2, 3)


@dataclass(frozen=True)
class SyntheticOptions:
    """What `prepare synthetic` generates: classes × videos of frames at size (width, height)."""

    classes: int = 8
    videos_per_class: int = 20
    frames: int = 32
    size: tuple[int, int] = (80, 64)


@dataclass(frozen=True)
class PrepareOptions:
    dataset: str
    root: Path
    out: Optional[Path] = None  # default data/DATASET
    index: IndexOptions = field(default_factory=IndexOptions)
    workers: int = 1
    decode: bool = False
    store: str = "jpeg"  # how --decode keeps the frames: jpeg or h264 (stadapt.data.store)
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)
    probe_cache: Optional[Path] = None  # default OUT/probe-cache.json; prepare_splits shares one


def split_dir(out: Path, split: int) -> Path:
    return out / f"split{split}"


def prepare_splits(options: PrepareOptions, console: Optional[Console] = None) -> dict[int, dict[str, Any]]:
    """All three official splits of UCF-101 or HMDB-51, each prepared into OUT/splitN; returns their reports.

    The splits list the same videos, so they share one probe cache in OUT and each video is
    probed once. A split is written as one set, like `prepare`; an interruption keeps the
    splits already written, and the same command again redoes only the rest's writing.
    """
    if options.dataset not in SPLIT_DATASETS:
        raise DataError(f"--split all: {options.dataset} has no official splits (only {', '.join(SPLIT_DATASETS)})")
    out = options.out or Path("data") / options.dataset
    reports = {}
    for split in OFFICIAL_SPLITS:
        reports[split] = prepare(dataclasses.replace(
            options, out=split_dir(out, split), probe_cache=out / CACHE_NAME,
            index=dataclasses.replace(options.index, split=split)), console)
    return reports


def prepare(options: PrepareOptions, console: Optional[Console] = None) -> dict[str, Any]:
    """Prepare `options.dataset` from `options.root`; returns the report it wrote.

    `console` shows progress bars (none without one). SIGTERM is treated like Ctrl-C for
    the duration, so that the temporary files of an interrupted write are removed.
    """
    if options.dataset not in DATASETS:
        raise DataError(f"unknown dataset {options.dataset!r} (choose one of: {', '.join(DATASETS)})")
    if options.decode:
        from stadapt.data.store import store_encoding

        store_encoding(codec=options.store)  # a bad --store stops here, before anything is written
    elif options.store != "jpeg":
        raise DataError(f"--store {options.store}: the frame store is written only with --decode (add it)")
    out = options.out or Path("data") / options.dataset
    started = time.monotonic()
    with _terminate_as_interrupt(), _output_lock(out):
        index = _index(options, console)
        _refuse_to_overwrite_inputs(index, out)
        indexed = time.monotonic()
        videos_root = index.videos_root.resolve()
        cache = options.probe_cache or out / CACHE_NAME
        outcomes, probe_summary = _probe(index, videos_root, cache, options.workers, console)
        probed = time.monotonic()
        report: dict[str, Any] = {
            "dataset": options.dataset,
            "videos_root": str(videos_root),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **_settings(options),
            "classes": {head: len(names) for head, names in index.classes.items()},
            "splits": {},
            "probe": probe_summary,
        }
        texts: dict[Path, str] = {classes_file(out, head): classes_text(names) for head, names in index.classes.items()}
        for split in SPLITS:
            rows, summary = _split_rows(index, split, videos_root, outcomes)
            report["splits"][split] = summary
            texts[out / f"{split}.csv"] = manifest_text(rows, _columns(index))
        _require_training_videos(report)
        report["seconds"] = {"index": round(indexed - started, 3), "probe": round(probed - indexed, 3),
                             "total": round(time.monotonic() - started, 3)}
        texts[out / "report.json"] = report_text(report)
        atomic_write_texts(texts)
        if options.decode:
            report["store"] = _decode(out, options.workers, console, options.store)
            report["seconds"]["total"] = round(time.monotonic() - started, 3)
            atomic_write_text(out / "report.json", report_text(report))
    return report


def _index(options: PrepareOptions, console: Optional[Console]) -> Index:
    root = options.root
    if options.dataset == "synthetic":
        return _generate_synthetic(root, options, console)
    if not root.exists():
        raise DataError(f"{root}: no such directory (the {options.dataset} ROOT)")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (the {options.dataset} ROOT)")
    return INDEXERS[options.dataset](root, options.index)


def _generate_synthetic(root: Path, options: PrepareOptions, console: Optional[Console]) -> Index:
    from stadapt.data.synthetic import generate_synthetic  # on use: only `prepare synthetic` renders videos

    spec = options.synthetic
    with _progress(console, "generating videos", spec.classes * spec.videos_per_class) as advance:
        videos = generate_synthetic(root, classes=spec.classes, videos_per_class=spec.videos_per_class,
                                    frames=spec.frames, size=spec.size, seed=options.index.seed,
                                    on_video=lambda _: advance())
    root = root.resolve()
    files = [(Path(path).resolve().relative_to(root), name) for path, name in videos]
    return index_files(root, files, options.index)


def _refuse_to_overwrite_inputs(index: Index, out: Path) -> None:
    outputs = {(out / name).resolve() for name in ("train.csv", "val.csv", "report.json", CACHE_NAME)}
    outputs |= {classes_file(out, head).resolve() for head in index.classes}
    for source in index.sources:
        if source.resolve() in outputs:
            raise DataError(f"--out {out} would overwrite {source}, which is an input; choose another --out")


def _probe(index: Index, videos_root: Path, cache_file: Path, workers: int, console: Optional[Console]
           ) -> tuple[dict[Path, VideoInfo | UnreadableVideo], dict[str, int]]:
    """Probe every listed video that exists, once, taking unchanged ones from the cache."""
    files = sorted({videos_root / c.path for rows in index.splits.values() for c in rows})
    present = [f for f in files if f.is_file()]
    cache = ProbeCache(cache_file)
    with _progress(console, "probing videos", len(present)) as advance:
        try:
            outcomes, stats = probe_many(present, workers, cache, on_result=lambda _: advance())
        finally:
            cache.save()  # an interrupted run still keeps what it probed
    return outcomes, {"files": len(present), "probed": stats.probed, "cached": stats.cached, "workers": workers}


def _settings(options: PrepareOptions) -> dict[str, Any]:
    """The options that shaped the splits, so that report.json says how it was made."""
    if options.dataset in ("ucf101", "hmdb51"):
        return {"split": options.index.split}
    if options.dataset in ("folder", "synthetic"):
        return {"val_fraction": options.index.val_fraction, "seed": options.index.seed}
    return {}


def _columns(index: Index) -> list[str]:
    heads = [head for head in index.classes if head != "label"]
    segments = any(c.segment is not None for rows in index.splits.values() for c in rows)
    return ["path", "label", *heads, "num_frames", "fps", *(("start_frame", "stop_frame") if segments else ())]


def _split_rows(index: Index, split: str, videos_root: Path, outcomes: dict[Path, VideoInfo | UnreadableVideo]
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Manifest rows for the usable samples of `split`, and its entry in report.json.

    Counts are of samples (an EPIC-Kitchens video holds many); each problem file is listed once.
    A segment becomes frames at the video's own rate; one that starts after the video ends is
    a skipped row.
    """
    rows, problems, listed = [], [], set()
    skipped = list(index.skipped.get(split, []))
    missing = unreadable = 0
    candidates: list[Candidate] = index.splits.get(split, [])
    for candidate in candidates:
        outcome = outcomes.get(videos_root / candidate.path)
        if isinstance(outcome, VideoInfo):
            row = {"path": candidate.path.as_posix(), **candidate.labels,
                   "num_frames": outcome.num_frames, "fps": outcome.fps}
            if candidate.segment is not None:
                first, last = segment_frames(candidate.segment, outcome.fps)
                if first >= outcome.num_frames:
                    skipped.append(Skipped(candidate.where, (
                        f"segment starts at {candidate.segment[0]:.2f} s, after the end of {candidate.path.as_posix()} "
                        f"({outcome.num_frames} frames at {outcome.fps:.2f} fps)")))
                    continue
                row["start_frame"], row["stop_frame"] = first, min(last, outcome.num_frames - 1)
            rows.append(row)
            continue
        if outcome is None:
            missing += 1
            problem = {"path": candidate.path.as_posix(), "problem": "missing", "reason": "no such file"}
        else:
            unreadable += 1
            problem = {"path": candidate.path.as_posix(), "problem": "unreadable", "reason": outcome.reason}
        if candidate.path not in listed:
            listed.add(candidate.path)
            problems.append(problem)
    summary = {
        "indexed": len(candidates), "videos": len(rows), "missing": missing, "unreadable": unreadable,
        "skipped": len(skipped), "classes": len({row["label"] for row in rows}), "problems": problems,
        "skipped_rows": [{"where": s.where, "reason": s.reason} for s in skipped],
    }
    return rows, summary


def _require_training_videos(report: dict[str, Any]) -> None:
    """Writing empty manifests over good ones helps nobody: say what went wrong instead."""
    train = report["splits"]["train"]
    if train["videos"]:
        return
    example = ""
    if train["problems"]:
        first = train["problems"][0]
        example = f"; e.g. {Path(report['videos_root']) / first['path']}: {first['reason']}"
    raise DataError(f"{report['dataset']}: no usable training video under {report['videos_root']} "
                    f"({train['indexed']} listed, {train['missing']} missing, {train['unreadable']} unreadable, "
                    f"{train['skipped']} rows skipped){example}")


def _decode(out: Path, workers: int, console: Optional[Console], codec: str) -> dict:
    from stadapt.data.store import write_store  # on use: only --decode writes the frame store

    dataset = PreparedDataset.open(out)
    samples = [s for split in SPLITS for s in dataset.samples(split)]
    with _progress(console, "decoding into the store", len({s.path for s in samples})) as advance:
        return write_store(out, samples, workers=workers, on_video=lambda _: advance(), codec=codec)


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold `out/.prepare.lock` for the whole run: a second `stadapt prepare` into the same
    directory stops at once with one line instead of interleaving its files with ours. The
    lock dies with its process, so one left by a killed run is taken over."""
    created = not out.exists()
    if not created and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a directory")
    lock = FileLock(out / LOCK_NAME)
    if not lock.acquire():
        raise BusyError(f"--out {out} is being written by another `stadapt prepare` ({lock.owner()}); "
                        "wait for it to finish, or choose another --out")
    try:
        yield
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):  # only when empty: a failed first run leaves no folder
                out.rmdir()


@contextlib.contextmanager
def _progress(console: Optional[Console], description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar on `console`, or a silent stand-in without one."""
    if console is None or total == 0:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so that `finally` blocks clean up temporary files."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary_table(report: dict[str, Any], out: Path) -> Table:
    """Per split: usable videos, missing, unreadable, skipped rows, classes with videos."""
    table = Table("split", "videos", "missing", "unreadable", "skipped rows", "classes",
                  title=f"{report['dataset']} → {out}", caption=f"problem files: {out / 'report.json'}")
    total = report["classes"]["label"]
    for split, s in report["splits"].items():
        table.add_row(split, str(s["videos"]), str(s["missing"]), str(s["unreadable"]), str(s["skipped"]),
                      f"{s['classes']} of {total}")
    return table


def parse_size(text: str) -> tuple[int, int]:
    """'80x64' → (80, 64): width, height."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise DataError(f"--size must read WIDTHxHEIGHT like 80x64, got {text!r}")
    return int(width), int(height)
