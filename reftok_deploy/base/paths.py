"""Every path a command reads and writes, resolved and checked before any work; cleaned up after a failure.

A command declares its inputs and outputs in one :class:`OutputPlan` at its start:

- an output that is the same file as an input (same resolved path or same inode, hard links and
  symlinks included) or as another output is refused;
- an output path that is an existing folder (or, for a folder output, an existing file) is refused;
- missing parent folders are created for every output (the same rule everywhere, said in each
  ``--help``), and each output's folder is proven writable with a temp file;
- file names that are not UTF-8 are refused where OpenCV would open them (it crashes on them);
- when the command fails (any exception, Ctrl-C included), the folders the plan created and the output
  files that did not exist before are removed: a failed command leaves nothing it did not find.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile


def utf8_name(path: str | Path, what: str) -> None:
    """Refuse a path OpenCV cannot take: its bytes are not UTF-8 (Python holds them as surrogates)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise ReftokError(f"{what} {shown}: the file name is not valid UTF-8, which OpenCV cannot open or write; "
                          "rename it") from None


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(resolved path, (device, inode) where it exists) of ``path``."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
        return resolved, (st.st_dev, st.st_ino)
    except OSError:
        return resolved, None


def _normalized(path: str | Path, what: str) -> Path:
    """``path`` with its folder resolved as the OS will resolve it (symlinks, ``..``), the last name kept as
    given (an output that is a symlink is replaced, not followed). A ``..`` below a folder that does not
    exist yet is refused: it would mean another place once that folder is created."""
    path = Path(os.path.abspath(path))
    if path.name in ("", ".", ".."):
        raise ReftokError(f"{what} {path}: give a name, not '..'")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    rest = path.parent.relative_to(existing)
    if ".." in rest.parts:
        raise ReftokError(f"{what} {path}: '..' after a folder that does not exist")
    return Path(os.path.realpath(existing)) / rest / path.name


def _files_under(path: Path, limit: int = 100_000) -> Iterable[Path]:
    """``path`` itself if a file, else every file under it (at most ``limit``: a data folder may be large)."""
    if path.is_file():
        yield path
    elif path.is_dir():
        for count, file in enumerate(p for p in path.rglob("*") if p.is_file()):
            if count >= limit:
                return
            yield file


class OutputPlan:
    """The inputs and outputs of one command (see the module docstring). Use as a context manager
    around the command's work: on an exception the outputs it created are removed.

    >>> with OutputPlan() as plan:
    ...     plan.reads(video, "video")
    ...     out = plan.file(output, "--output")
    ...     ...  # work; write ``out`` atomically
    """

    def __init__(self) -> None:
        self._inputs: dict[tuple[int, int] | str, tuple[str, Path]] = {}
        self._outputs: dict[str, tuple[str, Path]] = {}
        self._new_files: list[Path] = []
        self._new_folders: list[tuple[Path, Callable[[Path], bool] | None]] = []

    # -- inputs -------------------------------------------------------------------------------------------
    def reads(self, path: str | Path | None, what: str) -> None:
        """Declare an input file or folder (every file under a folder counts); missing paths are left
        for the command's own "not found" message."""
        if path is None:
            return
        for file in _files_under(Path(path)):
            resolved, inode = _identity(file)
            self._inputs.setdefault(resolved, (what, file))
            if inode is not None:
                self._inputs.setdefault(inode, (what, file))

    def _clash(self, path: Path) -> str | None:
        resolved, inode = _identity(path)
        for key in (resolved, inode):
            if key is not None and key in self._inputs:
                what, file = self._inputs[key]
                return f"{what} {file}"
        return None

    # -- outputs ------------------------------------------------------------------------------------------
    def file(self, path: str | Path, what: str, opencv: bool = False) -> Path:
        """Declare an output file -> its path as given. Refused: same as an input or another output, an
        existing folder, an unwritable folder. Its missing parent folders are created (removed again on
        failure, as is everything this plan created when a declaration is refused)."""
        given = Path(path)
        with self._undo_on_error():
            if opencv:
                utf8_name(given, what)
            path = _normalized(given, what)
            self._check_new_output(path, what)
            if path.is_dir():
                raise ReftokError(f"{what} {given} is a folder; give a file name")
            if not path.exists() and not path.is_symlink():
                self._new_files.append(path)
            self._writable_folder(path.parent, what)
        return given

    def folder(self, path: str | Path, what: str, writes: Iterable[str] = (),
               keep_if: Callable[[Path], bool] | None = None) -> Path:
        """Declare an output folder that will hold the files ``writes`` (relative names) -> its path.
        Created when missing, and then removed with everything in it if the command fails, unless
        ``keep_if(folder)`` says what was written by then is worth keeping (a training checkpoint)."""
        given = Path(path)
        with self._undo_on_error():
            path = _normalized(given, what)
            if path.exists() and not path.is_dir():
                raise ReftokError(f"{what} {given} is a file; give a folder")
            self._check_new_output(path, what)
            for name in writes:
                inner = path / name
                clash = self._clash(inner)
                if clash is not None:
                    raise ReftokError(f"{what} {given} would overwrite {clash}, which this command reads; choose "
                                      "another output folder")
                if inner.is_dir():
                    raise ReftokError(f"{what} {given}: {given / name} is a folder where this command writes a "
                                      "file; move it away or choose another output folder")
            self._writable_folder(path, what, keep_if)
        return given

    def keep(self, *paths: str | Path | None) -> None:
        """The outputs ``paths`` are finished and published: a later failure (a Ctrl-C while sources close)
        must not remove them, nor the folders they are in."""
        kept = {_normalized(p, "output") for p in paths if p is not None}
        self._new_files = [f for f in self._new_files if f not in kept]
        self._new_folders = [(folder, keep_if) for folder, keep_if in self._new_folders
                             if not any(folder in k.parents for k in kept)]

    @contextlib.contextmanager
    def _undo_on_error(self):
        try:
            yield
        except BaseException:
            self.undo()
            raise

    def _check_new_output(self, path: Path, what: str) -> None:
        clash = self._clash(path)
        if clash is not None:
            raise ReftokError(f"{what} {path} is {clash}, which this command reads; choose another output path")
        resolved, _ = _identity(path)
        if resolved in self._outputs:
            other, _ = self._outputs[resolved]
            raise ReftokError(f"{what} and {other} are the same file {path}; give each its own path")
        self._outputs[resolved] = (what, path)

    def _writable_folder(self, folder: Path, what: str, keep_if: Callable[[Path], bool] | None = None) -> None:
        """Create ``folder`` and missing parents (recorded for clean-up) and prove a file can be made there."""
        missing = []
        probe = folder
        while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise ReftokError(f"{what}: {probe} is a file, not a folder")
        try:
            for created in reversed(missing):
                created.mkdir()
                self._new_folders.append((created, keep_if if created == folder else None))
            AtomicFile(folder / ".write-test").discard()
        except OSError as exc:
            raise ReftokError(f"{what}: folder {folder} is not writable: {exc.strerror or exc}") from None

    # -- clean-up -----------------------------------------------------------------------------------------
    def undo(self) -> None:
        """Remove the output files that did not exist before and the folders this plan created."""
        for file in self._new_files:
            try:
                if file.is_file() or file.is_symlink():
                    file.unlink()
            except OSError:
                pass
        kept = [folder for folder, keep_if in self._new_folders
                if keep_if is not None and folder.is_dir() and keep_if(folder)]
        for folder, _ in reversed(self._new_folders):
            if folder.is_dir() and not any(k == folder or folder in k.parents for k in kept):
                shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> "OutputPlan":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.undo()
