"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class StadaptError(Exception):
    """A problem with the user's input (a file, a field, a value), not a bug."""

    exit_code = 2


class RecipeError(StadaptError):
    """A recipe that cannot be read or does not validate."""


class DataError(StadaptError):
    """A data set, manifest or video that cannot be used."""


class CheckpointError(StadaptError):
    """A checkpoint or adapter file that is missing, truncated, foreign or unsafe."""


class DiskFullError(StadaptError):
    """A write failed for want of space; the file it was replacing is untouched."""


class BusyError(StadaptError):
    """Another process is writing the same output directory."""


def not_utf8(path: object, exc: UnicodeDecodeError) -> DataError:
    """`path:LINE: not UTF-8 ...` for a text file that failed to decode, the line counted from the bytes."""
    line = exc.object[: exc.start].count(b"\n") + 1
    return DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})")


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of `exc`'s message (its type name when it has none), cut at `limit` characters:
    what a library's error says, short enough for a one-line error of ours."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
