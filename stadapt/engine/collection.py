"""`stadapt predict DIR --out results.jsonl`: a collection of any size, one JSON line per video.

Each line is written whole and flushed as soon as its video is scored, so a run that is
killed leaves a file whose complete lines are valid results. `--resume` keeps those lines
(dropping a torn last one), skips their videos and appends the rest: over a run of any
length every video ends up in the file exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stadapt.engine.predict import Predictor, Timeline
from stadapt.engine.progress import CountProgress
from stadapt.errors import StadaptError


@dataclass
class StreamSummary:
    path: Path
    written: int  # lines this run added
    kept: int  # videos already in the file (--resume)
    errors: int  # of the lines written, videos that could not be read


def done_videos(path: Path) -> tuple[set[str], int]:
    """The videos of the complete, valid lines of `path`, and the byte length they take up."""
    done: set[str] = set()
    end = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # the torn last line of a killed run
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not isinstance(entry, dict) or "video" not in entry:
                break
            done.add(entry["video"])
            end += len(line)
    return done, end


def stream_predictions(predictor: Predictor, entries: list[tuple[str, Optional[str]]], out: Path,
                       resume: bool = False, timeline: Optional[Timeline] = None,
                       progress: Optional[CountProgress] = None) -> StreamSummary:
    """Append one line per video of `entries` not yet in `out` (with `resume`) to `out`."""
    done: set[str] = set()
    if out.exists():
        if not resume:
            raise StadaptError(f"--out {out}: already exists; pass --resume to add the videos it lacks, "
                               "or choose another file")
        done, end = done_videos(out)
        with open(out, "r+b") as fh:
            fh.truncate(end)
    todo = [(video, error) for video, error in entries if video not in done]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out, "a", encoding="utf-8")
    except OSError as exc:
        raise StadaptError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    written = errors = 0
    if progress is not None:
        progress.start(len(todo))
    with fh:
        for result in predictor.results(todo, timeline):
            fh.write(json.dumps(result.entry) + "\n")  # one write per line
            fh.flush()
            written += 1
            errors += "error" in result.entry
            if progress is not None:
                progress.advance()
    if progress is not None:
        progress.close()
    return StreamSummary(out, written, len(entries) - len(todo), errors)


def summary_line(summary: StreamSummary) -> str:
    parts = [f"wrote {summary.written} lines to {summary.path}"]
    if summary.kept:
        parts.append(f"{summary.kept} videos were already there")
    if summary.errors:
        parts.append(f"{summary.errors} unreadable (error lines)")
    return "; ".join(parts)

