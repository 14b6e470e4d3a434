"""File helpers shared by checkpoints, manifests and exports: hashing, atomic writes, bounded JSON reads."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from reftok_deploy.base.errors import ReftokError


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Errors of a write that the user can act on (space, quota, file size limit, hardware, permissions).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM})


class AtomicFile:
    """A new file at ``path`` that appears complete or not at all.

    The data goes to a temp file in the same folder, created exclusively with a random name
    (``mkstemp``: O_CREAT|O_EXCL, so a symlink planted at that name is refused, never followed);
    :meth:`commit` fsyncs it, makes it mode 0644 and renames it over ``path`` (atomic on POSIX),
    then fsyncs the folder; :meth:`discard` removes it. Two writers of the same ``path`` never share
    a temp file: the last commit wins and is whole. ``suffix`` ends the temp name (writers such as
    OpenCV's pick a container from it). Use as a context manager: commit on success, discard on error.
    """

    def __init__(self, path: str | Path, suffix: str = ".tmp") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=suffix)
        os.close(fd)
        self.tmp = Path(name)

    def open(self, mode: str = "wb") -> BinaryIO:
        """The temp file opened for writing, refusing to follow a symlink swapped in at its name."""
        fd = os.open(self.tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
        return os.fdopen(fd, mode)

    def sync(self) -> None:
        """Flush the temp file to disk (a full disk or an I/O error shows here at the latest) and give it
        the mode a plain open() would; the temp file is removed and a ReftokError raised on failure."""
        try:
            fd = os.open(self.tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
                try:  # mkstemp made it 0600; give it what a plain open() would (vfat/CIFS refuse: keep theirs)
                    os.fchmod(fd, 0o666 & ~_umask())
                except (OSError, AttributeError):
                    pass
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc) from None
        except BaseException:
            self.discard()
            raise

    def publish(self) -> Path:
        """Rename the synced temp file over ``path`` (atomic on POSIX) and sync the folder."""
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise write_error(self.path, exc) from None
        _fsync_folder(self.path.parent)
        return self.path

    def commit(self) -> Path:
        self.sync()
        return self.publish()

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_error(self.path, exc) from None


class StagedOutput:
    """An output written to an :class:`AtomicFile` (``self._out``) and finished in two steps, so that a command
    with several outputs finishes (writes, checks, syncs) all of them before it publishes any. Subclasses
    implement :meth:`finish` and :meth:`abort`."""

    _out: AtomicFile

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def commit(self) -> Path:
        """Move the finished file into place."""
        return self._out.publish()

    def close(self) -> Path:
        """Finish, then move into place."""
        self.finish()
        return self.commit()


def commit_together(outputs: list[StagedOutput]) -> None:
    """Finish every output (written, checked, synced) before moving any into
    place: one that fails aborts them all, so a command never leaves one output beside a lost other."""
    try:
        for out in outputs:
            out.finish()
    except BaseException:
        for out in outputs:
            out.abort()
        raise
    for out in outputs:
        out.commit()


def write_error(path: str | Path, exc: OSError) -> ReftokError:
    """One line for a write that failed (disk full, quota, I/O error, permissions), naming the target."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return ReftokError(f"cannot write {path}: {reason}; nothing was written there")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_folder(staging: Path, target: Path) -> None:
    """Rename a finished ``staging`` folder to ``target`` (same file system), replacing a folder already there
    whole: the old one is moved aside first and put back if the rename fails (OSError re-raised); the parent
    folder is synced, so the new folder survives a power cut."""
    import shutil

    old = None
    if target.is_dir() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "previous")
    elif target.is_dir():
        target.rmdir()
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old / "previous", target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(target.parent)


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be made in it, before any long work (one-line error)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        AtomicFile(folder / ".write-test").discard()
    except OSError as exc:
        raise ReftokError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (see :class:`AtomicFile`)."""
    with AtomicFile(path) as out, out.open() as fh:
        fh.write(data)


def read_json_object(path: Path, max_bytes: int, fmt: str, what: str) -> dict[str, Any]:
    """Parse a JSON object of at most ``max_bytes`` whose ``format`` field is ``fmt``; one-line errors."""
    if path.stat().st_size > max_bytes:
        raise ReftokError(f"{path} is larger than {max_bytes} bytes: not a {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ReftokError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ReftokError(f"{path} is not a {what} (format != {fmt!r})")
    return data
