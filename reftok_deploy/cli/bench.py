"""reftok-bench: encode/decode speed per backend and precision at the sizes users run, side by side."""

from __future__ import annotations

import itertools
import json

import click

from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.cli.options import (checkpoint_option, device_option, json_option, max_gops_option, streams_option,
                                       threads_option, verbose_option, videos_option)


E2E_GOPS = 10  # GOPs of the end-to-end run (the timed clips' frames replayed)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_folder", type=click.Path())
@click.option("--backends", default=None,
              help="Comma list, first is the baseline [default: torch + every onnxruntime precision exported].")
@checkpoint_option("For the torch backend [default: the one recorded in the manifest].")
@videos_option("Real videos [default: built-in clips]; repeat for several.")
@click.option("--size", "sizes", multiple=True, default=("256",), show_default=True, metavar="N|WxH",
              help="Frame size: N (short side resized to N, centre N x N) or WIDTHxHEIGHT (resized to cover, "
                   "centre crop), multiples of 8; repeat for several, e.g. --size 256 --size 640x480 --size 1280x720.")
@max_gops_option(2, "GOPs per clip.", hidden_aliases=("--gops",))
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1, 10_000), help="Timed rounds (medians).")
@click.option("--end-to-end/--model-only", default=True, show_default=True,
              help="Also run the fastest backend whose PSNR is within its precision's tolerance of the "
                   "baseline's through reftok-run's whole path (GOPs, overlay, MP4 writing).")
@threads_option
@streams_option
@device_option("cpu or cuda.")
@json_option()
@verbose_option
@user_errors
def main(export_folder, backends, checkpoint, videos, sizes, max_gops, repeats, end_to_end, threads, streams, device,
         as_json) -> None:
    """Time encode and decode of each backend on the same real GOPs in one run (round-robin,
    medians) and print ms per GOP, frames/s, GFLOP/s against this machine's measured matrix-multiply
    rate, speed-ups against the first backend and, with --end-to-end, reftok-run's fps beside the
    model-only fps (--streams applies to that end-to-end run; the model-only rows run one block at a time)."""
    import math

    import numpy as np

    import torch

    from reftok_deploy.deploy.backends import cpu_name
    from reftok_deploy.deploy.throughput import bench, end_to_end as run_end_to_end, matmul_peak_gflops, parse_size
    from reftok_deploy.model.checkpoint import load_checkpoint
    from reftok_deploy.model.data import demo_clips
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.model.flops import gop_flops
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.deploy.parity_check import gop_feeds
    from reftok_deploy.runtimes.factory import check_streams, make_runner, make_runners, parse_spec
    from reftok_deploy.base.spec import TOLERANCES
    from reftok_deploy.base.video import center_crop, read_video

    if backends is not None and not backends.strip():
        raise ReftokError("--backends is empty: give a comma list such as torch,onnxruntime:fp32")
    if streams > 1 and not end_to_end:
        raise ReftokError("--streams applies to the end-to-end row: drop --model-only or --streams")
    check_streams(streams, "auto", device, threads)
    shapes = [parse_size(s) for s in sizes]
    export = open_export(export_folder)
    manifest = export.manifest
    specs = [s.strip() for s in backends.split(",")] if backends else ["torch"] + [f"onnxruntime:{p}" for p in export.precisions]
    checkpoint = checkpoint or manifest["checkpoint"].get("path")
    if not isinstance(checkpoint, str):
        raise ReftokError(f"{export_folder}: its manifest records no checkpoint path: pass --checkpoint")
    block = export.geometry.block_frames
    model, _ = load_checkpoint(checkpoint)
    gflop_256 = gop_flops(model, 256)["total"]  # every term scales with the pixel count
    codebook = math.prod(model.cfg.fsq_levels)
    del model
    peak = matmul_peak_gflops()
    source = {str(v): read_video(v, max_frames=max_gops * (block + 1)) for v in videos}  # only what is timed
    runners = [make_runner(s, export, checkpoint, device=device, threads=threads) for s in specs]
    for runner in runners:
        runner.load()
    report = {"cpu": cpu_name(), "threads": threads or torch.get_num_threads(), "matmul_peak_gflops": round(peak, 1),
              "baseline": runners[0].name, "sizes": {}}
    from tqdm import tqdm

    bar = tqdm(total=len(shapes) * (len(runners) + repeats), desc="benchmarking", unit="round", disable=None, leave=False)
    try:
        for height, width in shapes:
            raw = source or demo_clips(max(height, width), gops=max_gops, block_frames=block)
            clips = {n: np.stack([center_crop(f, width, height) for f in c]) for n, c in raw.items()}
            feeds = [f for _, f in gop_feeds(clips, block, max_gops)]
            bar.set_description_str(f"benchmarking {width}x{height}")
            result = bench(runners, feeds, repeats=repeats, progress=bar.update)
            gflop = gflop_256 * height * width / 256**2
            for row in result["backends"].values():
                row["gflop_per_s"] = gflop / (row["total_ms"] / 1000)
                row["of_matmul_peak"] = row["gflop_per_s"] / peak
            entry = {"gflop_per_gop": gflop, **result}
            if end_to_end:
                # the fastest whose end-to-end PSNR is within its precision's tolerance of the baseline's
                base_psnr = result["backends"][runners[0].name]["psnr_db"]
                eligible = [r for r, (backend, precision) in zip(runners, map(parse_spec, specs))
                            if result["backends"][r.name]["psnr_db"] >= base_psnr - TOLERANCES[precision].max_psnr_delta_db
                            and (streams == 1 or backend != "tensorrt")]
                fastest = min(eligible, key=lambda r: result["backends"][r.name]["total_ms"])
                # --streams: copies of the fastest with the threads shared out, closed after the run
                copies = make_runners(specs[runners.index(fastest)], export, checkpoint, device=device,
                                      threads=threads, streams=streams) if streams > 1 else []
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
                    torch.set_num_threads(report["threads"])  # a torch copy set PyTorch's per-process count
                model_only = result["backends"][fastest.name]["fps_encode_decode"]
                entry["end_to_end"] = {"backend": fastest.name, "streams": streams, "fps": summary["fps"],
                                       "model_fps": summary["model_fps"],
                                       "model_only_fps": model_only, "of_model_only": summary["fps"] / model_only,
                                       "frame_count": summary.get("frames"), "stage_ms_per_frame": summary["stage_ms_per_frame"]}
            report["sizes"][f"{width}x{height}"] = entry
    finally:
        bar.close()
        for runner in runners:
            runner.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['cpu']}, {report['threads']} thread(s): float32 matmul {peak:.0f} GFLOP/s; "
               f"{repeats} repeats, ratios vs {report['baseline']}")
    for size, entry in report["sizes"].items():
        click.echo(f"\n{size}: {entry['gops']} GOPs of {entry['frames_per_gop']} frames, {entry['gflop_per_gop']:.1f} "
                   "GFLOP per GOP")
        click.echo(f"{'backend':<20}{'enc ms':>9}{'dec ms':>9}{'fps':>8}{'GFLOP/s':>9}{'of peak':>9}{'total x':>9}"
                   f"{'PSNR':>8}")
        for name, r in entry["backends"].items():
            click.echo(f"{name:<20}{r['encode_ms']:>9.1f}{r['decode_ms']:>9.1f}{r['fps_encode_decode']:>8.1f}"
                       f"{r['gflop_per_s']:>9.1f}{100 * r['of_matmul_peak']:>8.0f}%{r['speedup_total']:>9.2f}"
                       f"{r['psnr_db']:>8.2f}")
        if "end_to_end" in entry:
            e2e = entry["end_to_end"]
            streams_note = f" x {e2e['streams']} streams" if e2e["streams"] > 1 else ""
            click.echo(f"end to end (reftok-run's path, {e2e['backend']}{streams_note}, {e2e['frame_count']} frames): "
                       f"{e2e['fps']:.1f} fps; "
                       f"{100 * e2e['of_model_only']:.0f} % of its model-only row above; its own model stage "
                       f"{e2e['model_fps']:.1f} fps ({100 * e2e['fps'] / e2e['model_fps']:.0f} %)")

