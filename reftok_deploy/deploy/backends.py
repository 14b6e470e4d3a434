"""Backend choice for the commands: an export of the checkpoint made on demand, and ``--backend auto``.

Application layer: it uses both the exporter and the runtimes (neither imports the other).

``--backend auto`` chooses by measurement, not by a rule: every backend available here is checked for
parity against PyTorch (the tolerances of its precision, :data:`reftok_deploy.base.spec.TOLERANCES`) and
timed on the same GOPs of the built-in clips, round-robin; the fastest one that passed is used. CPUs
differ (onnxruntime's INT8 was 1.15x its FP32 on one x86 box and 1.64x on another; OpenVINO's INT8 is
fast only with VNNI/AMX), and rankings change with the frame size, so the result is cached per machine
and size in the export folder (:data:`AUTO_FILE`, or ``auto-backend-WxH.json`` at sizes other than
:data:`PROBE_SIZE`), keyed by CPU/GPU, threads, device, library versions and the measured size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import ExportFolder, open_export, tool_versions
from reftok_deploy.base.spec import GRAPH_NAMES, SPATIAL_FACTOR

AUTO_FILE = "auto-backend.json"
PROBE_SIZE = 256  # frames of the built-in clips, centre-cropped, where the frame size is not known yet
PROBE_MAX_PIXELS = 640 * 480  # larger frames are measured at this many pixels, same aspect ratio
PROBE_GOPS = 2
PROBE_REPEATS = 3


def cached_export(checkpoint: str | Path, say=lambda _: None) -> ExportFolder:
    """An FP32 ONNX export of ``checkpoint`` in the user cache (``$REFTOK_CACHE`` or
    ``~/.cache/reftok-deploy``), made once (TorchScript exporter, seconds), opened once."""
    import os

    from reftok_deploy.model.checkpoint import weights_sha256

    sha = weights_sha256(checkpoint)
    root = Path(os.environ.get("REFTOK_CACHE", Path.home() / ".cache" / "reftok-deploy"))
    folder = root / "exports" / sha[:16]
    try:
        return open_export(folder)
    except ReftokError:
        pass
    from reftok_deploy.export.job import ExportOptions, run_export

    say(f"exporting ONNX for onnxruntime into {folder} (once per checkpoint)")
    run_export(checkpoint, folder, ExportOptions(dynamo=False, tensorrt="skip"))
    return open_export(folder)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def candidate_specs(export: ExportFolder, device: str) -> list[str]:
    """Every backend spec that could run ``export`` here (PyTorch first: it is the parity baseline)."""
    from reftok_deploy.base.engines import check_engine, gpu_name, tensorrt_version

    specs = ["torch"]
    specs += [f"onnxruntime:{p}" for p in export.precisions]
    if device == "cpu" and _importable("openvino"):
        from reftok_deploy.runtimes.openvino_runner import native_bf16

        specs += [f"openvino:{p}" for p in export.precisions]
        if "fp32" in export.precisions and native_bf16():
            specs.append("openvino:bf16")
    if tensorrt_version() and gpu_name():
        here = {"tensorrt": tensorrt_version(), "gpu": gpu_name()}

        def usable(entry) -> bool:  # listed, and built for this GPU and TensorRT
            return (isinstance(entry, dict) and isinstance(entry.get("key"), dict) and isinstance(entry.get("file"), str)
                    and check_engine(export.path / entry["file"], dict(entry["key"], **here)) is None)

        specs += [f"tensorrt:{p}" for p in ("fp32", "fp16", "int8")
                  if all(usable(export.engine(graph, p)) for graph in GRAPH_NAMES)]
    return specs


def probe_size(size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) the backends are measured at: the frames' own size rounded up to whole
    tokens (what the graphs run on), scaled down to at most PROBE_MAX_PIXELS with its aspect ratio
    (every backend is loaded at once while timing, and a GOP's cost is proportional to pixels),
    or PROBE_SIZE square where the size is not known."""
    if size is None:
        return PROBE_SIZE, PROBE_SIZE
    height, width = (max(int(v), 1) for v in size)
    shrink = min(1.0, math.sqrt(PROBE_MAX_PIXELS / (height * width)))
    return tuple(-(-max(int(v * shrink), 1) // SPATIAL_FACTOR) * SPATIAL_FACTOR for v in (height, width))


def probe_clips(size: tuple[int, int], block_frames: int) -> dict[str, Any]:
    """The built-in clips at ``size`` (height, width): rendered square at the larger side, centre-cropped."""
    from reftok_deploy.model.data import demo_clips

    height, width = size
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return {name: clip[:, top: top + height, left: left + width]
            for name, clip in demo_clips(side, block_frames=block_frames).items()}


def measurement_key(export: ExportFolder, device: str, threads: int | None,
                    timing_size: tuple[int, int], candidates: list[str]) -> dict[str, Any]:
    """What a cached measurement is valid for: this machine (CPU, GPU, the backends that can run here:
    ``candidates``, :func:`candidate_specs`), these libraries, this export, and the (height, width) it was
    timed at (:func:`probe_size` of the frame size)."""
    from reftok_deploy.base.engines import gpu_name

    versions = tool_versions()
    if _importable("openvino"):
        from importlib import metadata

        try:
            versions["openvino"] = metadata.version("openvino")
        except metadata.PackageNotFoundError:  # an archive or system install: no pip metadata
            import openvino

            versions["openvino"] = getattr(openvino, "__version__", "unknown")
    from reftok_deploy.base.machine import usable_cores
    from reftok_deploy.runtimes.factory import backend_label
    from reftok_deploy.base.spec import TOLERANCES
    import platform

    return {"cpu": cpu_name(), "machine": platform.machine(), "cpus": usable_cores(), "gpu": gpu_name(), "device": device,
            "threads": threads, "versions": versions, "manifest_sha256": export.manifest_sha256,  # as opened, not read again
            # what can run here, and how (openvino:int8's float ops in bf16 or f32): a VM's CPU name does not
            # say whether it has bf16
            "candidates": [backend_label(spec, device) for spec in candidates],
            "tolerances": {p: vars(t) for p, t in TOLERANCES.items()},
            # how this package runs INT8 graphs under OpenVINO (its load-time rewrites): a measurement made before
            # the Concat/ReLU6 rewrites must not keep openvino:int8 out
            "openvino_int8_rewrites": 2,
            "probe": {"size": list(timing_size), "gops": PROBE_GOPS, "repeats": PROBE_REPEATS}}


def measure_backends(export: ExportFolder, checkpoint: str | Path, specs: list[str], device: str,
                     threads: int | None, say: Callable[[str], None] = lambda _: None,
                     timing_size: tuple[int, int] = (PROBE_SIZE, PROBE_SIZE)) -> dict[str, dict[str, Any]]:
    """Parity against PyTorch on the built-in clips at PROBE_SIZE, then round-robin timing of those
    that passed at ``timing_size`` (height, width; :func:`probe_size` of the frames') -> per spec
    ``{"parity": bool, "failures": [...], "total_ms": float | None}``."""
    from reftok_deploy.deploy.throughput import bench
    from reftok_deploy.deploy.parity_check import compare, gop_feeds
    from reftok_deploy.runtimes.factory import make_runner, parse_spec
    from reftok_deploy.base.spec import TOLERANCES

    block = export.geometry.block_frames
    def probe_feeds(at: tuple[int, int]) -> list:
        return list(gop_feeds(probe_clips(at, block), block, 1))[:PROBE_GOPS]

    # Parity is a property of the numerics, checked at PROBE_SIZE whatever the frame size (at 640x480 it
    # took most of a 3-minute measurement); speed depends on the size and is timed at it.
    feeds = probe_feeds((PROBE_SIZE, PROBE_SIZE))
    timing_feeds = feeds if timing_size == (PROBE_SIZE, PROBE_SIZE) else probe_feeds(timing_size)
    results: dict[str, dict[str, Any]] = {}
    passed = []
    baseline = make_runner("torch", export, checkpoint, device=device, threads=threads)
    baseline.load()
    try:
        for spec in specs:
            runner = baseline
            try:
                if spec != "torch":
                    runner = make_runner(spec, export, checkpoint, device=device, threads=threads)
                    runner.load()
                failures = [] if runner is baseline else compare(baseline, runner, feeds,
                                                                 TOLERANCES[parse_spec(spec)[1]]).failures
            except Exception as exc:  # noqa: BLE001 (a runtime that cannot load or run here is skipped, not fatal)
                failures = [f"could not run here: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"]
            results[spec] = {"parity": not failures, "failures": failures, "total_ms": None}
            if failures:
                say(f"auto: {spec} skipped: {failures[0]}")
                if runner is not baseline:
                    runner.close()
            else:
                passed.append((spec, runner))
        try:
            timing = bench([r for _, r in passed], [f for _, f in timing_feeds], repeats=PROBE_REPEATS)["backends"]
        except Exception as exc:  # noqa: BLE001
            say(f"auto: timing failed ({exc}); using PyTorch")
            timing = {baseline.name: {"total_ms": 0.0}}
        for spec, runner in passed:
            if runner.name in timing:
                results[spec]["total_ms"] = round(timing[runner.name]["total_ms"], 2)
    finally:
        for _, runner in passed:
            if runner is not baseline:
                runner.close()
        baseline.close()
    return results


def _read_cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("results"), dict):
        return None
    for entry in record["results"].values():  # a hand-edited or damaged record is measured again
        if not (isinstance(entry, dict) and isinstance(entry.get("parity"), bool)
                and (entry.get("total_ms") is None or isinstance(entry.get("total_ms"), (int, float)))):
            return None
    return record


def ranked(results: dict[str, dict[str, Any]]) -> list[tuple[float, str]]:
    """(ms per GOP, spec) of every spec that passed parity and was timed, fastest first."""
    return sorted((r["total_ms"], spec) for spec, r in results.items()
                  if r.get("parity") and isinstance(r.get("total_ms"), (int, float)))


def choose(results: dict[str, dict[str, Any]]) -> str:
    """The fastest spec whose parity passed."""
    timed = ranked(results)
    if not timed:
        raise ReftokError("no backend passed parity with PyTorch here")
    return timed[0][1]


def measured_choice(export: ExportFolder, checkpoint: str | Path, device: str, threads: int | None,
                    say: Callable[[str], None] = lambda _: None, size: tuple[int, int] | None = None) -> tuple[str, str]:
    """(spec, reason): the cached measurement for this machine and frame size, or a new one (seconds),
    saved beside the export (one record per size: backends rank differently at different sizes)."""
    from reftok_deploy.base.files import atomic_write_bytes

    height, width = probe_size(size)
    path = export.path / (AUTO_FILE if (height, width) == (PROBE_SIZE, PROBE_SIZE)
                          else AUTO_FILE.replace(".json", f"-{width}x{height}.json"))
    specs = candidate_specs(export, device)
    key = measurement_key(export, device, threads, (height, width), specs)
    record = _read_cached(path, key)
    origin = f"cached in {path}"
    if record is None:
        say(f"auto: checking {', '.join(specs)} against PyTorch, then timing them on {PROBE_GOPS} GOPs at "
            f"{width}x{height} (once per machine, export and frame size)")
        record = {"key": key, "results": measure_backends(export, checkpoint, specs, device, threads, say,
                                                               (height, width))}
        try:
            atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
            origin = f"measured now, saved to {path}"
        except OSError as exc:
            origin = f"measured now, not saved ({exc.strerror or exc})"
    results = record["results"]
    spec = choose(results)
    failed = [s for s, r in results.items() if not r.get("parity")]
    table = ", ".join(f"{s} {ms:.0f}" for ms, s in ranked(results))
    return spec, (f"fastest that passed parity here, ms per GOP: {table}"
                  + (f"; failed parity: {', '.join(failed)}" if failed else "") + f"; {origin}")


def auto_backend(export: ExportFolder | None, checkpoint: str | Path, device: str,
                 say=lambda _: None, threads: int | None = None,
                 size: tuple[int, int] | None = None) -> tuple[str, ExportFolder | None, str]:
    """Pick the fastest backend that passes parity here at frames of ``size`` (height, width)
    -> (spec, opened export folder, reason).

    Without an export folder, an FP32 export of the checkpoint is made once in the user cache; where
    that fails, PyTorch eager is used."""
    if export is None:
        try:
            export = cached_export(checkpoint, say)
        except (ReftokError, OSError) as exc:
            return "torch", None, f"PyTorch eager (no ONNX export available: {exc})"
    try:
        spec, why = measured_choice(export, checkpoint, device, threads, say, size)
    except ReftokError as exc:
        return "torch", export, f"PyTorch eager ({exc})"
    return spec, export, why
