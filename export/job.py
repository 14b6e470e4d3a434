"""reftok-export's work: ONNX graphs, mixed precision, checks, validation, engines and the manifest.

Everything is written into a staging folder inside the output folder and moved into
place only when complete, the manifest last: an interrupted export leaves the output
folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from reftok_deploy.model.checkpoint import load_checkpoint, weights_sha256
from reftok_deploy.base.engines import ShapeProfile, gpu_name, tensorrt_version
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.export.onnx_export import OPSET, export_graph
from reftok_deploy.export.precision import to_mixed_fp16
from reftok_deploy.base.graph_regions import token_arithmetic_nodes
from reftok_deploy.export.preflight import preflight
from reftok_deploy.export.tensorrt_check import check_tensorrt, tensorrt_missing
from reftok_deploy.base.files import check_writable_folder, sha256_file
from reftok_deploy.base.manifest import artifact_key, split_artifact_key, tool_versions, write_manifest
from reftok_deploy.base.spec import GRAPH_NAMES, INPUTS, OUTPUTS, artifact_name, fixed_dims

Progress = Callable[[str], None]
Validator = Callable[[Path, dict, Path, "ExportOptions", Progress], dict]


@dataclass
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32",)
    dynamo: bool = True
    opset: int = OPSET
    # Called on the staged folder before the manifest is written -> the manifest's "validation" entry.
    # The CLI passes reftok_deploy.deploy.validation.validate_folder; None skips validation (export never
    # imports runtimes or parity itself).
    validator: Validator | None = None
    validation_clips: dict[str, np.ndarray] | None = None  # uint8 [N,S,S,3]; default: demo clips
    max_gops: int = 2
    tensorrt: str = "auto"  # auto | skip | require
    profile: ShapeProfile = field(default_factory=ShapeProfile)
    graph_feeds: dict[str, list] = field(default_factory=dict)  # filled by calibration
    calib_feeds: list[dict[str, np.ndarray]] | None = None  # encoder feeds of real frames (INT8 only)
    calib_method: str = "percentile"
    trt_implicit_int8: bool = False  # TensorRT <= 10 only: FP32 graph + IInt8 calibrator instead of Q/DQ


def _annotate(proto: onnx.ModelProto, config: dict[str, Any], graph: str, precision: str, options: ExportOptions,
              checkpoint_sha: str) -> onnx.ModelProto:
    # model_config is the manifest's "model" section verbatim and checkpoint_sha256 its checkpoint hash:
    # manifest.open_export holds the manifest to them, so an edited manifest is refused.
    props = {
        "reftok.model_version": str(config["model_version"]),
        "reftok.model_config": json.dumps(config, sort_keys=True),
        "reftok.export": json.dumps({"graph": graph, "precision": precision, "exporter": "dynamo" if options.dynamo
                                     else "torchscript", "opset": options.opset, "checkpoint_sha256": checkpoint_sha},
                                    sort_keys=True),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "reftok-deploy"
    del proto.graph.value_info[:]  # stale after precision rewrites; re-inferred below
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _io(proto: onnx.ModelProto) -> dict[str, list[dict]]:
    def describe(values):
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "dims": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]
    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output)}


STAGING_PREFIX = ".staging-"


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete staging folders left by exports that were killed (their process is gone); returns them."""
    removed = []
    for folder in out.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and not folder.is_symlink() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def run_export(checkpoint: str | Path, out: str | Path, options: ExportOptions, progress: Progress = lambda _: None
               ) -> dict[str, Any]:
    """Export, check and validate; returns the manifest (also written to ``out/manifest.json``)."""
    check_tensorrt(options.tensorrt)
    started = time.perf_counter()
    out = Path(out)
    checkpoint = Path(checkpoint)
    model, ck_config = load_checkpoint(checkpoint)
    check_writable_folder(out)
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    previous = _previous_manifest(out)
    try:
        manifest = _export_into(staging, out, model, ck_config, checkpoint, options, progress)
        try:  # before any file moves: an odd earlier manifest must not leave the folder half-updated
            kept = merge_previous(manifest, previous, out)
        except (KeyError, TypeError, AttributeError, ValueError):
            kept = []
        for file in sorted(staging.iterdir()):
            file.replace(out / file.name)
        if kept:
            progress(f"kept the {', '.join(kept)} artefacts already in {out} (same checkpoint, files unchanged)")
        manifest["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_manifest(out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _previous_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest already in ``out`` (None where there is none or it cannot be read)."""
    from reftok_deploy.base.manifest import read_manifest

    try:
        return read_manifest(out, verify_files=False)
    except ReftokError:
        return None


def _with_defaults(model: Any) -> Any:
    """A manifest's model config with the keys added since version 2 shipped at their defaults."""
    from reftok_deploy.model.reftok import OPTIONAL_CONFIG_KEYS

    return {**{key: False for key in OPTIONAL_CONFIG_KEYS}, **model} if isinstance(model, dict) else model


def merge_previous(manifest: dict[str, Any], previous: dict[str, Any] | None, out: Path) -> list[str]:
    """Carry over the precisions an earlier export of the same checkpoint, model, exporter and opset wrote
    into ``out`` and this one did not (``--fp16`` then ``--int8`` gives all three), where every file of that
    precision (graphs, and TensorRT engines if any) is still there unchanged. Updates ``manifest`` in place;
    returns the precisions kept."""
    if (not previous or previous.get("checkpoint", {}).get("weights_sha256") != manifest["checkpoint"]["weights_sha256"]
            or _with_defaults(previous.get("model")) != _with_defaults(manifest["model"])
            or any(previous.get(k) != manifest.get(k) for k in ("exporter", "opset"))):
        return []  # the manifest records one exporter and opset for every graph it lists
    kept = []
    for precision in previous.get("precisions", []):
        if precision in manifest["precisions"] or not isinstance(precision, str):
            continue
        keys = [artifact_key(g, precision) for g in GRAPH_NAMES]
        entries = [previous["artifacts"].get(k) for k in keys]
        if not all(isinstance(e, dict) and isinstance(e.get("file"), str) and (out / e["file"]).is_file()
                   and sha256_file(out / e["file"]) == e.get("sha256") for e in entries):
            continue
        kept.append(precision)
        for key, entry in zip(keys, entries):
            manifest["artifacts"][key] = entry
            if key in (previous.get("preflight") or {}):
                manifest["preflight"][key] = previous["preflight"][key]
        report = ((previous.get("validation") or {}).get("reports") or {}).get(precision)
        if report is not None and "validation" in manifest:
            manifest["validation"]["reports"][precision] = dict(report, kept_from_previous_export=True)
            failures = [f"{precision}: {f}" for f in report.get("failures", [])]
            manifest["validation"]["failures"] = manifest["validation"].get("failures", []) + failures
            manifest["validation"]["ok"] = not manifest["validation"]["failures"]
        if precision == "int8" and previous.get("calibration"):
            manifest["calibration"] = previous["calibration"]
        old_engines = ((previous.get("tensorrt") or {}).get("engines") or {})
        for key in keys:
            engine = old_engines.get(key)
            if (isinstance(engine, dict) and isinstance(engine.get("file"), str) and (out / engine["file"]).is_file()
                    and sha256_file(out / engine["file"]) == engine.get("sha256")):
                manifest["tensorrt"].setdefault("engines", {})[key] = engine
    order = ("fp32", "fp16", "int8")
    manifest["precisions"] = sorted(set(manifest["precisions"]) | set(kept), key=order.index)
    return kept


def _export_into(folder: Path, final: Path, model, ck_config: dict, checkpoint: Path, options: ExportOptions,
                 progress: Progress) -> dict[str, Any]:
    cfg = model.cfg
    config = cfg.to_dict()
    artifacts: dict[str, dict] = {}
    checks: dict[str, dict] = {}
    ck_sha = weights_sha256(checkpoint)
    protos: dict[str, onnx.ModelProto] = {}
    for graph in GRAPH_NAMES:
        progress(f"exporting {graph} ({'dynamo' if options.dynamo else 'torchscript'}, opset {options.opset})")
        raw = export_graph(model, graph, folder / f".raw-{graph}.onnx", dynamo=options.dynamo, opset=options.opset)
        fp32 = onnx.load(str(raw))
        raw.unlink()
        for i, node in enumerate(fp32.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"
        protos[artifact_key(graph, "fp32")] = fp32
        if "fp16" in options.precisions:
            progress(f"mixed-precision FP16 {graph} (token arithmetic kept in FP32)")
            protos[artifact_key(graph, "fp16")] = to_mixed_fp16(onnx.load_from_string(fp32.SerializeToString()))
    calibration = None
    if "int8" in options.precisions:
        calibration = _calibrate(folder, final, model, protos, options, progress)
    for key, proto in protos.items():
        graph, precision = split_artifact_key(key)
        proto = _annotate(proto, config, graph, precision, options, ck_sha)
        file = folder / artifact_name(graph, precision)
        onnx.save(proto, str(file))
        report = preflight(proto)
        report.path = file.name
        checks[key] = report.to_dict()
        artifacts[key] = {"file": file.name, "graph": graph, "precision": precision, "format": "onnx",
                          "sha256": sha256_file(file), "bytes": file.stat().st_size, **_io(proto)}
    fp32_nodes = {g: token_arithmetic_nodes(protos[artifact_key(g, "fp32")]) for g in GRAPH_NAMES}
    manifest: dict[str, Any] = {
        "model": config,
        "checkpoint": {"path": str(checkpoint.resolve()), "weights_sha256": ck_sha,
                       "metrics": ck_config.get("metrics", {})},
        "exporter": "dynamo" if options.dynamo else "torchscript",
        "opset": options.opset,
        "precisions": list(options.precisions),
        "io": {g: {"inputs": [{"name": s.name, "dtype": np.dtype(s.dtype).name, "dims": list(fixed_dims(s, cfg.geometry))}
                              for s in INPUTS[g]],
                   "outputs": [{"name": s.name, "dtype": np.dtype(s.dtype).name, "dims": list(fixed_dims(s, cfg.geometry))}
                               for s in OUTPUTS[g]]} for g in GRAPH_NAMES},
        "artifacts": artifacts,
        "calibration": calibration,
        "preflight": checks,
        "versions": tool_versions(),
    }
    if options.validator is not None:
        manifest["validation"] = options.validator(folder, artifacts, checkpoint, options, progress)
    manifest["tensorrt"] = _tensorrt_step(folder, final, artifacts, cfg, options, fp32_nodes, progress)
    return manifest


def _calibrate(folder: Path, final: Path, model, protos: dict[str, onnx.ModelProto], options: ExportOptions,
               progress: Progress) -> dict[str, Any]:
    """Add ``{graph}.int8`` Q/DQ protos calibrated on real frames; returns the manifest's calibration entry."""
    import torch

    from reftok_deploy.calibration.feeds import decoder_feeds
    from reftok_deploy.calibration.qdq import cache_digest, quantize_qdq

    if not options.calib_feeds:
        raise ReftokError("INT8 export needs calibration frames (--calib-data)")

    @torch.inference_mode()
    def encode(reference: np.ndarray, frames: np.ndarray) -> np.ndarray:
        return model.encode(torch.from_numpy(reference), torch.from_numpy(frames)).numpy()

    feeds = {"encoder": options.calib_feeds, "decoder": decoder_feeds(options.calib_feeds, encode)}
    options.graph_feeds = feeds  # the TensorRT <= 10 calibrator reads the same frames
    caches = {}
    for graph in GRAPH_NAMES:
        fp32 = protos[artifact_key(graph, "fp32")]
        name = f"{graph}.int8.{options.calib_method}.{cache_digest(fp32, options.calib_method, feeds[graph])[:12]}.calib.json"
        if (final / name).is_file():
            shutil.copy2(final / name, folder / name)
            progress(f"INT8 {graph}: reusing calibration cache {name}")
        else:
            progress(f"INT8 {graph}: calibrating ({options.calib_method}) on {len(feeds[graph])} GOPs of real frames")
        protos[artifact_key(graph, "int8")] = quantize_qdq(fp32, feeds[graph], options.calib_method, folder / name)
        caches[graph] = {"file": name, "sha256": sha256_file(folder / name)}
    return {"method": options.calib_method, "feeds": len(options.calib_feeds), "caches": caches,
            "scheme": "QDQ, symmetric per-channel QInt8 weights, symmetric QInt8 activations; token arithmetic FP32"}


def _tensorrt_step(folder: Path, final: Path, artifacts: dict[str, dict], cfg, options: ExportOptions, fp32_nodes: dict,
                   progress: Progress) -> dict[str, Any]:
    engine_precisions = [p for p in options.precisions if p != "fp32"] or ["fp32"]
    finish = " ".join(["reftok-export"] + [f"--{p}" for p in engine_precisions if p != "fp32"]
                      + (["--calib-data PATH..."] if "int8" in engine_precisions else [])
                      + ["on the target (TensorRT + GPU)"])
    if options.tensorrt == "skip":
        return {"status": "skipped", "reason": "--tensorrt skip", "finish_command": finish}
    missing = tensorrt_missing()
    if missing is not None:
        check_tensorrt(options.tensorrt)
        return {"status": "not built", "reason": f"{missing} not found", "finish_command": finish}
    version, gpu = tensorrt_version(), gpu_name()
    from reftok_deploy.base.engines import check_engine, engine_key
    from reftok_deploy.export.tensorrt_build import build_engine

    engines = {}
    for precision in engine_precisions:
        for graph in GRAPH_NAMES:
            # TensorRT >= 11 takes precision from the graph; <= 10 uses the FP32 graph plus a builder flag
            # (and, with --trt-implicit-int8, a legacy calibrator on the same frames).
            major = int(version.split(".")[0])
            calibrator = None
            if precision == "int8" and options.trt_implicit_int8:
                from reftok_deploy.calibration.legacy_trt import legacy_calibrator

                calibrator = legacy_calibrator(options.graph_feeds[graph], folder / f"{graph}.trt-int8.cache")
            source_precision = precision if (major >= 11 or precision == "int8") and calibrator is None else "fp32"
            onnx_file = folder / artifacts[artifact_key(graph, source_precision)]["file"]
            progress(f"building TensorRT {precision} engine for the {graph} (TensorRT {version}, {gpu})")
            path = build_engine(onnx_file, graph, precision, folder, options.profile, cfg.geometry,
                                fp32_nodes=fp32_nodes[graph], previous=final, say=progress, calibrator=calibrator)
            key = engine_key(sha256_file(onnx_file), precision, options.profile, version, gpu)
            assert check_engine(path, key) is None
            engines[artifact_key(graph, precision)] = {"file": path.name, "key": key, "sha256": sha256_file(path)}
    return {"status": "built", "engines": engines}
