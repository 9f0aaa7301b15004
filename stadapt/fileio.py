"""Atomic file writes (a reader sees the old file or the new one, never half of one), and a
lock file that keeps two processes from writing the same directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Mapping, Optional

from stadapt.errors import DiskFullError, first_line


def _usual_mode() -> int:
    """The mode open() would give a new file (0666 less the umask); mkstemp gives 0600,
    which would hide prepared data from the other users of a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any error (a full disk, an interrupt) the temporary file is removed and the old
    `path` is left as it was.
    """
    path = Path(path)
    with _disk_full_reported(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _usual_mode())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _disk_full_reported(path):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


# Below this much free space, a failed write is put down to a full disk even when the writer
# hid the errno (torch.save raises RuntimeError("... file write failed")).
LOW_SPACE_BYTES = 1 << 20


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised while writing into `folder`, means the disk (or quota) is full."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE_BYTES


@contextlib.contextmanager
def _disk_full_reported(*paths: Path) -> Iterator[None]:
    """Turn a write that failed on a full disk into one DiskFullError line; other errors pass."""
    try:
        yield
    except Exception as exc:
        folder = next((p.parent for p in paths if p.parent.is_dir()), Path("."))
        if not disk_full(exc, folder):
            raise
        kept = [p.name for p in paths if p.exists()]
        verb = "is" if len(kept) == 1 else "are"
        what = f"the previous {', '.join(kept)} {verb} kept" if kept else "nothing was written"
        names = ", ".join(str(p) for p in paths) if len(paths) <= 3 else f"{paths[0]} and {len(paths) - 1} more files"
        reason = getattr(exc, "strerror", None) or first_line(exc)
        raise DiskFullError(f"{names}: not written, the disk is full ({reason[:200]}); {what}") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_texts(files: Mapping[Path, str]) -> None:
    """Replace several files as one set: an interrupt leaves all old files or all new ones.

    Every file is written and fsynced beside its target first; the renames, which take
    microseconds, then run with SIGINT and SIGTERM held back, so Ctrl-C or a `kill` cannot
    land between two of them. (A power cut still can.)
    """
    staged: list[tuple[Path, Path]] = []
    try:
        with _disk_full_reported(*map(Path, files)):
            _stage(files, staged)
        with _signals_held():
            for tmp, path in staged:
                os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _stage(files: Mapping[Path, str], staged: list[tuple[Path, Path]]) -> None:
    """Write each file beside its target, fsynced; record (temporary, target) in `staged`."""
    for path, text in files.items():
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        staged.append((Path(tmp), path))
        os.fchmod(fd, _usual_mode())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Record SIGINT and SIGTERM instead of acting on them; act once the block is done.

    Python runs signal handlers in the main thread only, so swapping the handlers works
    whatever other threads exist (a per-thread signal mask would not).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            signal.raise_signal(s)


class FileLock:
    """An exclusive lock on `path`, a file that holds `host pid` of its holder.

    Taken with flock(2), so the kernel drops it when the holder dies, however it dies: a lock
    file left behind by a dead process (SIGKILL, a crash) is simply taken over. `acquire`
    never waits; it returns False when another live process holds the lock, and `owner`
    then says who. The file is removed on release.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _usual_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder released (and removed) it between our open and flock: again
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def owner(self) -> str:
        """'PID 123 on host' of the holder, as its lock file says."""
        try:
            host, pid = self.path.read_text(encoding="utf-8").split()
            return f"PID {int(pid)} on {host}"
        except (OSError, ValueError, UnicodeDecodeError):
            return "another process"

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter then re-checks the inode
        os.close(self._fd)
        self._fd = None
