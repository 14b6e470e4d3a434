"""reftok-bench's work as a library: every backend of a deployment timed on the same real GOPs at each frame
size (:func:`reftok_deploy.deploy.throughput.bench`), with GFLOP/s against this machine's matmul rate, a
parity verdict per backend, and reftok-run's whole path for the fastest backend that passes.

A speed-up is only honest for a backend whose results are right: each row carries ``parity`` ("ok", or
"fails parity: -4.6 dB" where its end-to-end PSNR is further below the baseline's than its precision's
tolerance, :data:`reftok_deploy.base.spec.TOLERANCES`), and a backend that refuses to open here (a ReftokError
at build or load) is a skipped row with its one-line reason, not a crash.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.spec import TOLERANCES
from reftok_deploy.base.video import center_crop, read_video
from reftok_deploy.deploy.backends import cpu_name
from reftok_deploy.deploy.deployment import Deployment
from reftok_deploy.deploy.parity_check import gop_feeds
from reftok_deploy.deploy.throughput import bench, end_to_end as run_end_to_end, matmul_peak_gflops
from reftok_deploy.runtimes.factory import parse_spec
from reftok_deploy.runtimes.runner import Runner

E2E_GOPS = 10  # GOPs of the end-to-end run (the timed clips' frames replayed)


def bench_specs(backends: str | None, precisions: list[str]) -> list[str]:
    """The backends to time: ``--backends`` (a comma list, each checked), or torch + every onnxruntime
    precision the export has."""
    if backends is not None and not backends.strip():
        raise ReftokError("--backends is empty: give a comma list such as torch,onnxruntime:fp32")
    specs = [s.strip() for s in backends.split(",")] if backends else ["torch"] + [f"onnxruntime:{p}" for p in precisions]
    for spec in specs:
        parse_spec(spec)  # an unknown backend is a usage error, before anything is opened
    return specs


def parity_verdict(row: dict[str, Any], baseline: dict[str, Any], precision: str) -> str:
    """"ok", or "fails parity: -4.6 dB" where the row's PSNR is below the baseline's by more than the
    tolerance of its precision (the rule reftok-bench's end-to-end row and --backend auto hold backends to)."""
    delta = row["psnr_db"] - baseline["psnr_db"]
    return "ok" if delta >= -TOLERANCES[precision].max_psnr_delta_db else f"fails parity: {delta:+.1f} dB"


def open_runners(deployment: Deployment, specs: list[str]) -> tuple[list[tuple[str, Runner]], dict[str, str]]:
    """([(spec, loaded runner)] of the backends that open here, {spec: one-line reason} of those that do not).
    The baseline (the first) must open: every ratio is to it, so its error is the command's."""
    baseline = deployment.runner(specs[0])
    try:
        baseline.load()
    except BaseException:
        baseline.close()
        raise
    opened, skipped = [(specs[0], baseline)], {}
    try:
        for spec in specs[1:]:
            runner, reason = deployment.try_runner(spec)
            if runner is None:
                skipped[spec] = reason
            else:
                opened.append((spec, runner))
    except BaseException:  # a bug, not a refusal: close what was opened
        for _, runner in opened:
            runner.close()
        raise
    return opened, skipped


def bench_report(deployment: Deployment, specs: list[str], shapes: list[tuple[int, int]], videos: tuple[str, ...],
                 max_gops: int, repeats: int, end_to_end: bool) -> dict[str, Any]:
    """reftok-bench's report: per size (height, width) the backends' medians, GFLOP/s, parity and, with
    ``end_to_end``, reftok-run's path for the fastest that passes (on ``deployment.streams`` copies)."""
    import torch
    from tqdm import tqdm

    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.model.flops import gop_flops

    block = deployment.export.geometry.block_frames
    model = deployment.load_model()
    gflop_256 = gop_flops(model, 256)["total"]  # every term scales with the pixel count
    codebook = math.prod(model.cfg.fsq_levels)
    del model
    peak = matmul_peak_gflops()
    source = {str(v): read_video(v, max_frames=max_gops * (block + 1)) for v in videos}  # only what is timed
    opened, skipped = open_runners(deployment, specs)
    runners = [r for _, r in opened]
    report = {"cpu": cpu_name(), "threads": deployment.threads or torch.get_num_threads(),
              "matmul_peak_gflops": round(peak, 1), "baseline": runners[0].name, "sizes": {}, "skipped": skipped}
    bar = tqdm(total=len(shapes) * (len(runners) + repeats), desc="benchmarking", unit="round", disable=None, leave=False)
    try:
        for height, width in shapes:
            raw = source or demo_clips(max(height, width), gops=max_gops, block_frames=block)
            clips = {n: np.stack([center_crop(f, width, height) for f in c]) for n, c in raw.items()}
            feeds = [f for _, f in gop_feeds(clips, block, max_gops)]
            bar.set_description_str(f"benchmarking {width}x{height}")
            result = bench(runners, feeds, repeats=repeats, progress=bar.update)
            gflop = gflop_256 * height * width / 256**2
            base = result["backends"][runners[0].name]
            for spec, runner in opened:
                row = result["backends"][runner.name]
                row["gflop_per_s"] = gflop / (row["total_ms"] / 1000)
                row["of_matmul_peak"] = row["gflop_per_s"] / peak
                row["parity"] = parity_verdict(row, base, parse_spec(spec)[1])
            entry = {"gflop_per_gop": gflop, **result}
            if end_to_end:
                try:
                    entry["end_to_end"] = _end_to_end(deployment, opened, result, clips, block, codebook)
                finally:
                    torch.set_num_threads(report["threads"])  # a torch copy set PyTorch's per-process count
            report["sizes"][f"{width}x{height}"] = entry
    finally:
        bar.close()
        for runner in runners:
            runner.close()
    return report


def _end_to_end(deployment: Deployment, opened: list[tuple[str, Runner]], result: dict[str, Any],
                clips: dict[str, np.ndarray], block: int, codebook: int) -> dict[str, Any]:
    """reftok-run's whole path (GOPs, overlay, MP4 writing) for the fastest backend that passes parity."""
    rows = result["backends"]
    streams = deployment.streams
    eligible = [(spec, r) for spec, r in opened
                if rows[r.name]["parity"] == "ok" and (streams == 1 or parse_spec(spec)[0] != "tensorrt")]
    spec, fastest = min(eligible, key=lambda pair: rows[pair[1].name]["total_ms"])
    # --streams: copies of the fastest with the threads shared out, closed after the run
    copies = deployment.runners(spec) if streams > 1 else []
    frames = [f for clip in clips.values() for f in clip]  # already max_gops GOPs per clip
    # Replayed up to E2E_GOPS GOPs: the threads overlap only in steady state, and a run of two
    # GOPs is mostly the pipeline filling and draining.
    frames = list(itertools.islice(itertools.cycle(frames), max(len(frames), E2E_GOPS * (block + 1))))
    # One GOP per runner first, not reported: first-use start-up (the video encoder, the threads,
    # the runtime's buffers for the pipeline's arrays) was a third of a two-GOP run at 640x480.
    e2e_runners = copies or [fastest]
    try:
        for runner in copies:
            runner.load()
        run_end_to_end(e2e_runners, frames[: (block + 1) * len(e2e_runners)], block, codebook)
        summary = run_end_to_end(e2e_runners, frames, block, codebook)
    finally:
        for runner in copies:
            runner.close()
    model_only = rows[fastest.name]["fps_encode_decode"]
    return {"backend": fastest.name, "streams": streams, "fps": summary["fps"], "model_fps": summary["model_fps"],
            "model_only_fps": model_only, "of_model_only": summary["fps"] / model_only,
            "frame_count": summary.get("frames"), "stage_ms_per_frame": summary["stage_ms_per_frame"]}


def bench_lines(report: dict[str, Any], repeats: int) -> list[str]:
    """The report as reftok-bench prints it: a speed-up only for the backends that pass parity."""
    lines = [f"{report['cpu']}, {report['threads']} thread(s): float32 matmul {report['matmul_peak_gflops']:.0f} "
             f"GFLOP/s; {repeats} repeats, ratios vs {report['baseline']}"]
    for size, entry in report["sizes"].items():
        lines.append(f"\n{size}: {entry['gops']} GOPs of {entry['frames_per_gop']} frames, "
                     f"{entry['gflop_per_gop']:.1f} GFLOP per GOP")
        lines.append(f"{'backend':<20}{'enc ms':>9}{'dec ms':>9}{'fps':>8}{'GFLOP/s':>9}{'of peak':>9}{'total x':>9}"
                     f"{'PSNR':>8}")
        for name, r in entry["backends"].items():
            ratio = f"{r['speedup_total']:>9.2f}" if r.get("parity", "ok") == "ok" else f"{'-':>9}"
            lines.append(f"{name:<20}{r['encode_ms']:>9.1f}{r['decode_ms']:>9.1f}{r['fps_encode_decode']:>8.1f}"
                         f"{r['gflop_per_s']:>9.1f}{100 * r['of_matmul_peak']:>8.0f}%{ratio}{r['psnr_db']:>8.2f}"
                         + ("" if r.get("parity", "ok") == "ok" else f"  {r['parity']}"))
        for spec, reason in report.get("skipped", {}).items():
            lines.append(f"{spec:<20}skipped: {reason}")
        if "end_to_end" in entry:
            e2e = entry["end_to_end"]
            streams_note = f" x {e2e['streams']} streams" if e2e["streams"] > 1 else ""
            lines.append(f"end to end (reftok-run's path, {e2e['backend']}{streams_note}, {e2e['frame_count']} "
                         f"frames): {e2e['fps']:.1f} fps; {100 * e2e['of_model_only']:.0f} % of its model-only row "
                         f"above; its own model stage {e2e['model_fps']:.1f} fps "
                         f"({100 * e2e['fps'] / e2e['model_fps']:.0f} %)")
    return lines
