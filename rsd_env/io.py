"""File I/O shared by every layer: atomic writes, one writer per folder, and reads that name the file.

An interrupted process (Ctrl-C, SIGKILL, a full disk) must leave either the previous file or the new one,
never half of one; two processes writing the same folder must not interleave silently; and a file that is
not UTF-8 must say which file it is. Standard library only, so the data layer can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

TEMP_SUFFIX = ".tmp"


def cache_root() -> Path:
    """``$RSD_CACHE`` or ``~/.cache/rsd``: the converted model, cached targets and fetched data wheels."""
    return Path(os.environ.get("RSD_CACHE", Path.home() / ".cache" / "rsd"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path next to ``path``; renamed onto ``path`` only if the block succeeds.

    The temp file lives in the target's folder (same file system, so the rename is atomic) and is named
    ``.<name>.<random>.tmp``; a killed writer leaves at most such a hidden file (``remove_stale_temps``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs are for everyone to read
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, **dumps_kwargs: Any) -> Path:
    """Write ``data`` as JSON atomically."""
    return write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temp files that killed writers left in ``folder`` (call only while holding its lock)."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def read_text(path: str | Path | Traversable, what: str = "file", encoding: str = "utf-8") -> str:
    """A text file's contents (a UTF-8 byte-order mark dropped); a missing or undecodable file is a
    ``ValueError`` that names it and the fix."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path  # or a file inside a wheel (zipfile.Path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} {path} does not exist; check the path") from err
    except IsADirectoryError as err:
        raise ValueError(f"{what} {path} is a folder; give the file inside it") from err
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} line {line} (byte {err.start}) is not valid {encoding.upper()} "
                         f"({err.reason}); save the file as {encoding.upper()}") from err
    # editors on Windows start UTF-8 files with a byte-order mark; left in, it glues onto the first id
    return text.removeprefix("\ufeff") if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else text


class FolderBusy(OSError):
    """Another process holds the folder's lock."""


class FolderLock:
    """An exclusive, non-blocking lock on a folder, held through an open lock file (``flock``).

    The operating system drops the lock when the holder exits, even by SIGKILL, so a crash never leaves a
    stale lock behind. The lock file records the holder's pid and start time for the error message.
    """

    def __init__(self, folder: str | Path, name: str = ".lock", what: str = "run") -> None:
        self.folder, self.path, self.what = Path(folder), Path(folder) / name, what
        self._fh: Any = None

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        if not _try_lock(fh):
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise FolderBusy(f"another {self.what} is writing to {self.folder} ({holder}); wait for it to finish "
                             "or choose another output folder / run name")
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            _unlock(self._fh)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_lock(fh) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _unlock(fh) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
