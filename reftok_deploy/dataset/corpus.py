"""The clips a dataset job tokenizes: INPUT... (files, folders, globs, manifests, URIs) -> unique clip ids.

- a video file (by suffix) or a ``file://`` / pyarrow-filesystem URI of one;
- a folder, searched recursively for videos;
- a glob (``clips/**/*.mp4``);
- a manifest: a ``.txt`` / ``.lst`` file of paths (one a line, ``#`` comments), or a ``.parquet`` /
  ``.csv`` table with a ``path`` column and an optional ``clip_id`` column.

A clip id is the manifest's ``clip_id`` or, by default, the file's stem and 8 hex digits of the
sha1 of its full path (``box-1a2b3c4d``): stable across runs, unique, safe as a file name.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.video import VIDEO_SUFFIXES

MANIFEST_SUFFIXES = (".txt", ".lst", ".parquet", ".csv")
MAX_MANIFEST_BYTES = 1 << 30
CLIP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
URI = re.compile(r"[a-z][a-z0-9+.-]*://")


@dataclass(frozen=True)
class Clip:
    clip_id: str
    source: str  # a local path or a URI pyarrow opens


def default_clip_id(source: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source.split("://")[-1]).stem).strip("._-")[:64] or "clip"
    return f"{stem}-{hashlib.sha1(source.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _local(source: str) -> str:
    """``file://`` URIs as plain paths; other URIs as they are."""
    return source[len("file://"):] if source.startswith("file://") else source


def _absolute(path: str | Path) -> str:
    """A local path as workers on any node see it (they do not share the driver's working folder)."""
    return os.path.abspath(path)


def _is_video(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


def _from_manifest(path: Path) -> list[Clip]:
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ReftokError(f"manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")
    suffix = path.suffix.lower()
    if suffix in (".txt", ".lst"):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ReftokError(f"manifest {path} is not UTF-8 text") from None
        entries = [(line.strip(), None) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        entries = _table_entries(path)
    base = path.parent
    clips = []
    for source, clip_id in entries:
        source = source if URI.match(source) else _absolute(base / _local(source))
        clips.append(Clip(clip_id or default_clip_id(source), source))
    return clips


def _table_entries(path: Path) -> list[tuple[str, str | None]]:
    """(path, clip id or None) rows of a Parquet/CSV manifest."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError kinds for a bad file
        raise ReftokError(f"manifest {path} cannot be read as a table: {str(exc).splitlines()[0]}") from None
    if "path" not in table.column_names:
        raise ReftokError(f"manifest {path} has no 'path' column (columns: {', '.join(table.column_names[:10])})")
    paths = table.column("path").to_pylist()
    ids = table.column("clip_id").to_pylist() if "clip_id" in table.column_names else [None] * len(paths)
    if not all(isinstance(p, str) and p for p in paths):
        raise ReftokError(f"manifest {path}: every 'path' must be a non-empty string")
    return [(p, None if i is None else str(i)) for p, i in zip(paths, ids)]


def _expand_uri(source: str) -> list[Clip]:
    """A URI that pyarrow opens: a file, or a folder listed recursively for videos."""
    import pyarrow.fs as pafs

    try:
        fs, inner = pafs.FileSystem.from_uri(source)
        info = fs.get_file_info(inner)
    except Exception as exc:
        raise ReftokError(f"cannot open {source}: {str(exc).splitlines()[0]}") from None
    if info.type == pafs.FileType.NotFound:
        raise ReftokError(f"input not found: {source}")
    if info.type == pafs.FileType.File:
        return [Clip(default_clip_id(source), source)]
    scheme = source.split("://")[0]
    files = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return [Clip(default_clip_id(f"{scheme}://{f.path}"), f"{scheme}://{f.path}") for f in sorted(files, key=lambda f: f.path)
            if f.type == pafs.FileType.File and _is_video(f.path)]


def expand_inputs(inputs: list[str]) -> list[Clip]:
    """Every clip named by ``inputs`` (see the module docstring), in order, each once; one-line errors."""
    clips: list[Clip] = []
    for item in inputs:
        local = _local(item)
        if URI.match(local):
            clips += _expand_uri(local)
        elif any(ch in local for ch in "*?["):
            matches = sorted(glob.glob(local, recursive=True))
            if not matches:
                raise ReftokError(f"no file matches {item}")
            clips += [Clip(default_clip_id(_absolute(m)), _absolute(m)) for m in matches
                      if Path(m).is_file() and _is_video(m)]
        elif Path(local).is_dir():
            clips += [Clip(default_clip_id(_absolute(f)), _absolute(f)) for f in sorted(Path(local).rglob("*"))
                      if f.is_file() and _is_video(f.name)]
        elif Path(local).is_file():
            if Path(local).suffix.lower() in MANIFEST_SUFFIXES:
                clips += _from_manifest(Path(local))
            else:
                clips.append(Clip(default_clip_id(_absolute(local)), _absolute(local)))
        else:
            raise ReftokError(f"input not found: {item}")
    seen: dict[str, str] = {}
    unique = []
    for clip in clips:
        if not CLIP_ID.fullmatch(clip.clip_id):
            raise ReftokError(f"clip id {clip.clip_id!r} ({clip.source}): use letters, digits, '.', '_', '-' "
                              "(at most 128, not starting with a dot)")
        if clip.clip_id in seen:
            if seen[clip.clip_id] == clip.source:
                continue  # the same file named twice
            raise ReftokError(f"clip id {clip.clip_id} is given to both {seen[clip.clip_id]} and {clip.source}")
        seen[clip.clip_id] = clip.source
        unique.append(clip)
    if not unique:
        raise ReftokError("no video found in " + ", ".join(inputs))
    return unique
