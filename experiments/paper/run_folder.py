"""An evaluation's output folder: one writer at a time, and a run's files appear all together or not at all.

A run writes into a hidden staging folder inside the output folder; ``commit`` then replaces the previous
run's files (those its ``manifest.json`` lists) by the new ones and writes the new manifest last. So a run
that fails or is killed leaves the previous run's outputs untouched (its staging folder is removed by the
next run), two runs never mix, and unrelated files in the folder are left alone. A kill during the
commit itself (a few renames) is recorded in a journal; the next run removes that half-replaced run's files
instead of presenting them as complete. A second concurrent writer is refused by a lock.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rsd_env.io import FolderBusy, FolderLock, read_text, write_json

MANIFEST = "manifest.json"
COMPLETE_MARKER = "results.json"  # moved in last: its presence (with the manifest) means the run completed
_JOURNAL = ".commit.json"
_LOCK = ".rsd-eval.lock"
_STAGING_PREFIX = ".staging-"
# what rsd-eval wrote before manifests existed: replaced as one run
_LEGACY = ("results.json", "results.csv", "table.md", "*_budget.png", "*_pareto.png", "runs/**/*.trec")


class RunFolder:
    """Locks ``folder``, hands out a staging folder to write into, and commits or discards it."""

    def __init__(self, folder: str | Path, what: str = "rsd-eval") -> None:
        self.folder = Path(folder)
        self.what = what
        self.staging: Path | None = None
        self._lock: FolderLock | None = None
        self._created = False

    def open(self) -> Path:
        """Lock the folder, clean what killed runs left, and return a fresh staging folder."""
        self._created = not self.folder.exists()
        try:
            self._lock = FolderLock(self.folder, _LOCK, what=self.what).acquire()
            self._recover()
            self.staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=_STAGING_PREFIX))
        except FolderBusy:
            self.discard()
            raise
        except OSError as err:
            self.discard()
            raise OSError(f"output directory {str(self.folder)!r} is not writable "
                                  f"({err.strerror or err}); choose another with --output") from err
        except BaseException:
            self.discard()
            raise
        return self.staging

    def _recover(self) -> None:
        for stale in self.folder.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)  # a run killed before its commit
        journal = self.folder / _JOURNAL
        if journal.exists():
            try:
                files = json.loads(read_text(journal, "commit journal"))["files"]
            except (ValueError, KeyError, TypeError):
                files = []
            for name in [MANIFEST, *files]:
                (self.folder / name).unlink(missing_ok=True)
            journal.unlink()
            _prune_empty(self.folder)
            print(f"{self.what}: removed the files of a run in {self.folder} that was killed while it replaced "
                  "the previous run's outputs (neither run is complete there)", file=sys.stderr)

    def previous_files(self) -> list[str]:
        """The files the previous run wrote (from its manifest; older folders: the usual output names)."""
        manifest = self.folder / MANIFEST
        if manifest.exists():
            try:
                return list(json.loads(read_text(manifest, "manifest"))["files"])
            except (ValueError, KeyError, TypeError):
                pass
        found = {p for pattern in _LEGACY for p in self.folder.glob(pattern) if p.is_file()}
        return sorted(str(p.relative_to(self.folder)) for p in found)

    def commit(self, run: dict[str, Any]) -> list[str]:
        """Replace the previous run's files by the staged ones; ``run`` goes into the manifest."""
        assert self.staging is not None, "open() first"
        new = sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())
        old = self.previous_files()
        write_json(self.folder / _JOURNAL, {"files": sorted(set(old) | set(new))})
        for name in [MANIFEST, COMPLETE_MARKER, *old]:  # the markers of completeness go first
            (self.folder / name).unlink(missing_ok=True)
        last = [n for n in new if n == COMPLETE_MARKER]
        for name in [n for n in new if n != COMPLETE_MARKER] + last:
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.staging / name).replace(target)
        write_json(self.folder / MANIFEST, {**run, "committed": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": new},
                   indent=1)
        (self.folder / _JOURNAL).unlink()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        _prune_empty(self.folder)
        self.close()
        return new

    def discard(self) -> None:
        """Drop the staged files (the previous run's outputs stay); remove the folder if this run made it."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._created and self._lock is not None:
            (self.folder / _LOCK).unlink(missing_ok=True)
        self.close()
        if self._created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _prune_empty(folder: Path) -> None:
    """Remove empty ``runs/<dataset>`` folders (of a dataset the new run does not have), and ``runs`` if empty."""
    runs = folder / "runs"
    if not runs.is_dir():
        return
    for sub in sorted((p for p in runs.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(runs.iterdir()):
        runs.rmdir()
