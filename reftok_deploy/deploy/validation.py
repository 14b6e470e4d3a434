"""Export validation: every exported ONNX precision against PyTorch on real frames.

Validation layer: it runs the runtimes and the parity comparison on an export folder, so it
sits above both export and runtimes; reftok-export hands :func:`validate_folder` to the exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reftok_deploy.export.job import ExportOptions, Progress
from reftok_deploy.base.manifest import artifact_key
from reftok_deploy.base.spec import GRAPH_NAMES, TOLERANCES


def validate_folder(folder: Path, artifacts: dict[str, dict], checkpoint: Path, options: ExportOptions,
                    progress: Progress) -> dict[str, Any]:
    """Compare every ONNX precision with PyTorch on real frames; every failure is collected."""
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.deploy.parity_check import compare, gop_feeds
    from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner
    from reftok_deploy.runtimes.torch_runner import TorchRunner

    reports = {}
    with TorchRunner(checkpoint) as torch_runner:
        clips = options.validation_clips or demo_clips(256, block_frames=torch_runner.block_frames)
        for precision in options.precisions:
            progress(f"validating onnxruntime {precision} against PyTorch on {len(clips)} real clip(s)")
            files = {g: folder / artifacts[artifact_key(g, precision)]["file"] for g in GRAPH_NAMES}
            with OnnxRuntimeRunner(files, name=f"onnxruntime-{precision}") as ort_runner:
                report = compare(torch_runner, ort_runner, gop_feeds(clips, torch_runner.block_frames, options.max_gops),
                                 TOLERANCES[precision])
            reports[precision] = report.to_dict()
    failures = [f"{p}: {f}" for p, r in reports.items() for f in r["failures"]]
    return {"ok": not failures, "clips": sorted(clips), "failures": failures, "reports": reports}
