"""Atomic file replacement, shared by ``model.save`` and the caches, and where the caches live.

A file is written to a temporary file beside it and renamed over it, so a reader sees the old
file or the whole new one, never a part. The temporary file is ``.{name}.XXXXXXXX.tmp`` and holds
an exclusive ``flock`` while it is written: a later write to the same path removes the temporary
files a killed writer left behind, and the lock tells those apart from one that a concurrent
writer is still filling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NotARegularFile(OSError):
    """The path names something other than a regular file (a directory, device, fifo, socket)."""


def cache_dir() -> Path:
    """``$SYMNET_CACHE_DIR``, else ``$XDG_CACHE_HOME/symnet``, else ``~/.cache/symnet``; ``~``
    expanded (a value set without a shell keeps it), and a relative path taken from the
    working directory of its first use (a later ``os.chdir`` does not move the cache)."""
    text = os.environ.get("SYMNET_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "symnet")
    if text not in _PINNED:
        _PINNED[text] = Path(text).expanduser().absolute()
    return _PINNED[text]


_PINNED: dict[str, Path] = {}  # each value of the setting → the directory it first named


def atomic_write(path, write: Callable[[BinaryIO], None]) -> Path:
    """Replace the file at ``path`` by what ``write(f)`` writes to the binary file ``f``.

    A symlink stays a symlink: the file it points to is replaced. The file keeps its permission
    bits (a new one gets ``0o666 & ~umask``, as ``open`` would give it). If ``write`` raises or
    the process is killed, the old file is untouched; the temporary file is removed now, or by
    the next write to the same path. Returns the path of the file written (the link's target).
    """
    target = Path(os.path.realpath(path))
    mode = _mode_for(target)
    remove_orphans(target)
    f, tmp = _locked_temporary(target)
    try:
        with f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            os.replace(tmp, target)  # still locked: a concurrent sweep cannot take it for an orphan
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _mode_for(target: Path) -> int:
    """The permission bits the new file gets: the existing file's, or the default for a new one.
    Refuses a path that exists but is not a regular file, which a rename would replace."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return 0o666 & ~_umask()
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{target} exists and is {_kind(st.st_mode)}, not a regular file")
    return stat.S_IMODE(st.st_mode)


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _umask() -> int:
    """The process's umask, read from /proc where possible: setting it to read it back (the only
    portable way) would race with other threads creating files."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _locked_temporary(target: Path):
    """A new temporary file beside ``target``, open for writing and exclusively locked.

    A concurrent sweep may lock and unlink the file between its creation and our lock; then the
    file has no links left once we hold the lock, and we start over with a new one.
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        f = os.fdopen(fd, "wb")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_nlink > 0:
                return f, tmp
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            f.close()
            raise
        f.close()


def remove_orphans(target: Path) -> list[Path]:
    """Remove the temporary files of ``target`` that no writer holds (left by a killed one).
    Returns the paths removed."""
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:  # an unreadable directory: creating the new file will report the problem
        return []
    candidates = [target.parent / n for n in names if n.startswith(prefix) and n.endswith(".tmp")]
    return [path for path in candidates if _remove_if_unlocked(path)]


def _remove_if_unlocked(path: Path) -> bool:
    """Unlink ``path`` if it is a regular file whose lock we can take at once. The unlink happens
    under that lock, so the writer who created the file sees it vanish (see _locked_temporary)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.lstat(path).st_ino != st.st_ino:  # renamed over meanwhile: not ours to remove
            return False
        os.unlink(path)
        return True
    except OSError:  # locked by a live writer, or gone already
        return False
    finally:
        os.close(fd)
