"""reftok-tokenize's engine: a corpus of clips tokenized on Ray Data, resumable, into a Parquet dataset.

Ray Data schedules the clips (one row each) over an actor pool (``map_batches`` with
``ActorPoolStrategy``): each actor opens one runner once and tokenizes whole clips with
:class:`reftok_deploy.dataset.clip_tokenizer.ClipTokenizer`, writing the clip's shards and then its completion
record. Ray restarts an actor whose process dies and retries its clip (``max_restarts`` and
``max_task_retries`` are Ray Data's defaults for actor pools), so a lost worker costs a retry, not a
clip. The driver only plans and summarises: a rerun of a killed job skips clips with a completion record
of the same settings and removes the shards of the others before they are done again, so every clip is
in the dataset exactly once.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from reftok_deploy.dataset.clip_tokenizer import ClipTokenizer, TokenizeSettings
from reftok_deploy.dataset.corpus import Clip
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.machine import usable_cores
from reftok_deploy.deploy.ray_cluster import start_ray
from reftok_deploy.dataset.token_dataset import (DONE, ERRORS, FORMAT, FORMAT_VERSION, JOB, MANIFEST, SHARDS, read_done,
                                         remove_clip_shards, write_json, write_table)


def actor_class(settings: TokenizeSettings) -> type:
    """The actor class of the pool, ``settings`` built in: ``__init__`` opens the runner once, each call
    tokenizes a batch of clips (``{"clip_id": [...], "source": [...]}``) -> their summaries as columns.
    (Settings passed as constructor arguments would live in Ray's object store, where an actor restarted
    after its process died may not find them again.)"""

    class RayClipTokenizer:
        def __init__(self) -> None:
            import ray

            self.worker = ClipTokenizer(settings)
            self.worker.node = ray.get_runtime_context().get_node_id()[:16]  # the Ray node, not the host name

        def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
            rows = [self.worker.tokenize(Clip(str(c), str(s))) for c, s in zip(batch["clip_id"], batch["source"])]
            return {key: [row.get(key) for row in rows] for key in rows[0]}

    return RayClipTokenizer


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("reftok-deploy", "ray", "pyarrow", "torch", "onnxruntime", "openvino"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def prepare_output(out: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Start or continue the dataset in ``out``: a folder holding another job's dataset is refused unless
    ``overwrite`` (which removes this package's files there, nothing else)."""
    from reftok_deploy.base.files import read_json_object

    previous = None
    if (out / JOB).is_file():
        try:
            previous = read_json_object(out / JOB, 1 << 20, FORMAT, "reftok-tokenize job record")
        except ReftokError:
            previous = {"unreadable": True}
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ReftokError(f"{out} holds other files: give an empty or new folder for the dataset (or --overwrite "
                          "to replace a dataset there)")
    if previous is not None and not overwrite:
        differs = [k for k in job if k != "format" and previous.get(k) != job[k]]
        if differs:
            raise ReftokError(f"{out} holds a dataset made with other settings ({', '.join(differs)}): use "
                              "another folder, or --overwrite to start it again")
    if overwrite:
        for name in (SHARDS, DONE):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MANIFEST, ERRORS, JOB):
            (out / name).unlink(missing_ok=True)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    (out / DONE).mkdir(exist_ok=True)
    write_json(out / JOB, job)


def check_address(address: str | None, timeout: float = 3.0) -> None:
    """Refuse (one line, in seconds) a cluster address where nothing listens: ray.init would retry for minutes."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ReftokError(f"--address {address}: give HOST:PORT (ray start --head prints it), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ReftokError(f"--address {address}: nothing answers there ({exc.strerror or exc}); start the cluster "
                          "with `ray start --head`, or drop --address for a local Ray") from None


def tokenize_corpus(clips: list[Clip], settings: TokenizeSettings, job: dict[str, Any], workers: int | None,
                    address: str | None = None, overwrite: bool = False, num_gpus: float = 0.0,
                    on_clip: Callable[[dict[str, Any]], None] = lambda _: None) -> dict[str, Any]:
    """Tokenize ``clips`` into ``settings.out`` -> the dataset manifest (also written as manifest.json).

    ``workers`` actors (default: the cluster's CPUs / threads), each on ``settings.threads`` CPUs (and
    ``num_gpus`` of a GPU where set);
    ``on_clip`` gets each clip's summary as it finishes (progress)."""
    import pyarrow as pa
    import ray
    import ray.data

    out = Path(settings.out)
    prepare_output(out, job, overwrite)
    done = {k: v for k, v in read_done(out).items() if v.get("settings") == settings.fingerprint()}
    todo = [clip for clip in clips if clip.clip_id not in done]
    for clip in todo:  # shards of a clip whose job was killed before its completion record
        remove_clip_shards(out, clip.clip_id)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    ray_seconds = 0.0
    if todo:
        start_ray(address, None if address else max((workers or 0) * settings.threads, usable_cores()))
        ray_seconds = time.perf_counter() - started
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1) // settings.threads))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command draws its own, per clip
        context.print_on_execution_start = False
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        items = ray.data.from_items([{"clip_id": c.clip_id, "source": c.source} for c in todo],
                                    override_num_blocks=len(todo))
        tokenized = items.map_batches(
            actor_class(settings), batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))), num_cpus=settings.threads,
            num_gpus=num_gpus or None)
        for row in tokenized.iter_rows():
            row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            results.append(row)
            on_clip(row)
    seconds = time.perf_counter() - started
    manifest = _manifest(clips, done, results, settings, job, seconds, ray_seconds)
    failed = [r for r in results if r["status"] == "failed"]
    table = pa.table({"clip_id": [r["clip_id"] for r in failed], "source": [r["source"] for r in failed],
                      "reason": [r["reason"] for r in failed]})
    write_table(out / ERRORS, table)
    write_json(out / MANIFEST, manifest)
    return manifest


def _manifest(clips: list[Clip], done: dict[str, dict], results: list[dict[str, Any]], settings: TokenizeSettings,
              job: dict[str, Any], seconds: float, ray_seconds: float) -> dict[str, Any]:
    by_id = {r["clip_id"]: r for r in results}
    entries: dict[str, dict[str, Any]] = {}
    for clip in clips:
        record = by_id.get(clip.clip_id) or done.get(clip.clip_id)
        fields = ("source", "status", "gops", "frames", "fps", "token_bytes", "reference_bytes", "reason", "warning")
        entries[clip.clip_id] = {k: record.get(k) for k in fields}
        entries[clip.clip_id]["skipped"] = clip.clip_id not in by_id
    new = [r for r in results if r["status"] == "done"]
    frames = sum(r["frames"] for r in new)
    totals = {
        "clips": sum(e["status"] == "done" for e in entries.values()),
        "skipped": sum(e["skipped"] for e in entries.values()),
        "failed": sum(e["status"] == "failed" for e in entries.values()),
        "damaged": sum(bool(e["warning"]) for e in entries.values()),
        "gops": sum(e["gops"] or 0 for e in entries.values() if e["status"] == "done"),
        "frames": sum(e["frames"] or 0 for e in entries.values() if e["status"] == "done"),
        "token_bytes": sum(e["token_bytes"] or 0 for e in entries.values() if e["status"] == "done"),
        "reference_bytes": sum(e["reference_bytes"] or 0 for e in entries.values() if e["status"] == "done"),
        "seconds": round(seconds, 2), "ray_start_seconds": round(ray_seconds, 2),
        # this run's own frames over its time after Ray started (start-up reported apart)
        "frames_per_second": round(frames / max(seconds - ray_seconds, 1e-9), 2) if new else 0.0,
        "nodes": sorted({r["node"] for r in results if r.get("node")}),
        "worker_pids": len({(r.get("node"), r.get("pid")) for r in results}),
    }
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **job, "versions": versions(), "summary": totals,
            "clips": entries}
