"""A tokenized video dataset on disk: Parquet shards a trainer reads without this package.

Layout of ``OUT/``::

    manifest.json            dataset facts (checkpoint, FSQ levels, geometry, backend, versions, clips)
    job.json                 the settings the job was started with (a rerun must match them)
    shards/CLIP-NNNNN.parquet  one row per GOP (block of frames) of clip CLIP, at most rows_per_shard a file
    done/CLIP.json           a clip's completion record, written after its shards (resume skips it)
    errors.parquet           clip_id, source, reason of every clip that failed

Every file is written whole or not at all (temp file + rename). A clip's rows are in its shards only
once its completion record exists; a rerun removes the shards of clips without one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, atomic_write_bytes, read_json_object
from reftok_deploy.base.tokenstream import Block, png_size

FORMAT = "reftok-tokens"
FORMAT_VERSION = 1
MANIFEST, JOB, SHARDS, DONE, ERRORS = "manifest.json", "job.json", "shards", "done", "errors.parquet"
MAX_JSON = 64 << 20


def schema(token_count: int):
    """The row schema (pyarrow): one row per block of frames; ``tokens`` a fixed-size list of
    ``groups * token_height * token_width`` uint16 ids; ``reference_png`` the lossless reference the
    block is coded against, on the first block after a new reference (null on the others)."""
    import pyarrow as pa

    return pa.schema([
        ("clip_id", pa.string()), ("source", pa.string()), ("gop_index", pa.int32()),
        ("reference_frame", pa.int64()), ("first_frame", pa.int64()), ("frames", pa.int16()),
        ("start_seconds", pa.float64()), ("end_seconds", pa.float64()),
        ("height", pa.int32()), ("width", pa.int32()),
        ("token_groups", pa.int16()), ("token_height", pa.int16()), ("token_width", pa.int16()),
        ("tokens", pa.list_(pa.uint16(), token_count)),
        ("new_reference", pa.bool_()), ("scene_cut", pa.bool_()), ("reference_png", pa.binary()),
    ])


def shard_name(clip_id: str, index: int) -> str:
    return f"{clip_id}-{index:05d}.parquet"


def write_shard(out: Path, clip_id: str, index: int, rows: list[dict[str, Any]], token_count: int) -> Path:
    """Write ``rows`` (dicts of the schema's columns) as one Parquet shard, atomically -> its path."""
    import pyarrow as pa

    path = out / SHARDS / shard_name(clip_id, index)
    write_table(path, pa.Table.from_pylist(rows, schema=schema(token_count)))
    return path


def write_table(path: Path, table) -> None:
    """Write a pyarrow table as a Parquet file, whole or not at all."""
    import pyarrow.parquet as pq

    with AtomicFile(path, suffix=".parquet") as target:
        pq.write_table(table, str(target.tmp))


def clip_shards(out: Path, clip_id: str) -> list[Path]:
    """The shards of one clip, in order."""
    return sorted((out / SHARDS).glob(f"{clip_id}-[0-9][0-9][0-9][0-9][0-9].parquet"))


def remove_clip_shards(out: Path, clip_id: str) -> None:
    for path in clip_shards(out, clip_id):
        path.unlink(missing_ok=True)


def write_done(out: Path, clip_id: str, record: dict[str, Any]) -> None:
    atomic_write_bytes(out / DONE / f"{clip_id}.json", json.dumps(record, indent=1).encode())


def read_done(out: Path) -> dict[str, dict[str, Any]]:
    """Completion records by clip id (unreadable ones are ignored: that clip is done again)."""
    records = {}
    for path in sorted((out / DONE).glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("clip_id") == path.stem:
            records[path.stem] = record
    return records


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=float) + "\n").encode())


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The dataset manifest of ``out``, checked; one-line errors."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        raise ReftokError(f"{out} has no {MANIFEST}: not a reftok-tokenize dataset (or its job has not finished)")
    manifest = read_json_object(out / MANIFEST, MAX_JSON, FORMAT, "reftok-tokenize dataset manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ReftokError(f"{out / MANIFEST} has format version {manifest.get('format_version')!r}; this "
                          f"reftok-deploy reads {FORMAT_VERSION}")
    return manifest


def clip_records(out: str | Path, clip_id: str, manifest: dict[str, Any]) -> Iterator[np.ndarray | Block]:
    """A clip's references (``[H,W,3]`` uint8 RGB) and :class:`Block` s in stream order, as a .rtok would give
    them (for :func:`reftok_deploy.runtimes.stream.decode_stream`); every field is checked against the
    manifest before use."""
    import cv2
    import pyarrow.parquet as pq

    out = Path(out)
    clip = manifest.get("clips", {}).get(clip_id)
    if not isinstance(clip, dict) or clip.get("status") != "done":
        known = [k for k, v in manifest.get("clips", {}).items() if isinstance(v, dict) and v.get("status") == "done"]
        raise ReftokError(f"{out} has no finished clip {clip_id!r} (finished: {', '.join(known[:5]) or 'none'}"
                          f"{', ...' if len(known) > 5 else ''})")
    geometry = manifest["geometry"]
    codebook = int(manifest["model"]["codebook_size"])
    block = int(manifest["model"]["block_frames"])
    expected = 0
    for path in clip_shards(out, clip_id):
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise ReftokError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
        for row in table.to_pylist():
            if row["gop_index"] != expected:
                raise ReftokError(f"{path}: GOP {row['gop_index']} where {expected} was expected (shards missing?)")
            expected += 1
            height, width = row["height"], row["width"]
            grid = (row["token_groups"], row["token_height"], row["token_width"])
            if [height, width] != geometry.get("size", [height, width]) and geometry.get("size") is not None:
                raise ReftokError(f"{path}: GOP {expected - 1} is {width}x{height}, the dataset {geometry['size']}")
            if row["new_reference"]:
                png = row["reference_png"] or b""
                image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED) \
                    if png_size(png) == (width, height) else None
                if image is None or image.shape != (height, width, 3):
                    raise ReftokError(f"{path}: the reference of GOP {expected - 1} is not a {width}x{height} RGB PNG")
                yield np.ascontiguousarray(image[:, :, ::-1])
            tokens = np.asarray(row["tokens"], dtype=np.int64)
            if tokens.size != int(np.prod(grid)) or tokens.max(initial=0) >= codebook or not 0 < row["frames"] <= block:
                raise ReftokError(f"{path}: GOP {expected - 1} holds tokens or a frame count the model cannot decode")
            yield Block(tokens.reshape(grid).astype(np.int32), int(row["frames"]))
    if expected != clip.get("gops"):
        raise ReftokError(f"{out}: clip {clip_id} has {expected} GOPs in its shards, its manifest says {clip.get('gops')}")



def clip_header(out: str | Path, clip_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a .rtok header would say of one finished clip (frame size, fps, model, checkpoint, backend), so
    reftok-decode checks and replays a dataset clip like a token stream."""
    import pyarrow.parquet as pq

    shards = clip_shards(Path(out), clip_id)
    clip = manifest.get("clips", {}).get(clip_id) or {}
    if not shards or clip.get("status") != "done":
        raise ReftokError(f"{out} has no finished clip {clip_id!r}")
    try:
        first = pq.read_table(shards[0], columns=["height", "width"]).slice(0, 1).to_pylist()[0]
    except Exception as exc:
        raise ReftokError(f"{shards[0]} cannot be read: {str(exc).splitlines()[0]}") from None
    model = manifest.get("model", {})
    fps = clip.get("fps")
    return {"width": first["width"], "height": first["height"],
            "fps": float(fps) if isinstance(fps, (int, float)) and 0.1 <= fps <= 1000 else 25.0,
            "checkpoint_sha256": manifest.get("checkpoint", {}).get("weights_sha256"), "backend": manifest.get("backend"),
            **{k: model.get(k) for k in ("block_frames", "temporal_factor", "spatial_factor", "fsq_levels",
                                          "model_version", "codebook_size")}}
