"""Pick the INT8 quantiser by measurement: nvidia-modelopt's ONNX PTQ against this project's
onnxruntime Q/DQ graphs, on the same calibration feeds, in one run.

    python -m reftok_deploy.cli.modelopt_compare EXPORT_DIR --calib-data PATH... --video VIDEO...

EXPORT_DIR is a ``reftok-export --int8`` folder. Prints, for FP32, the folder's INT8 and
modelopt's INT8: end-to-end PSNR on the videos, token agreement with FP32, and onnxruntime
CPU ms per GOP (encode + decode, round-robin, medians) with the ratio to FP32.
Needs ``pip install nvidia-modelopt[onnx]`` (not a dependency of this package).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnx

from reftok_deploy.calibration.feeds import calibration_feeds, decoder_feeds
from reftok_deploy.calibration.qdq import FeedReader, separate_shared_activation_qdq
from reftok_deploy.cli import OneLineCommand, user_errors
from reftok_deploy.graph_regions import token_arithmetic_nodes
from reftok_deploy.files import AtomicFile
from reftok_deploy.metrics import clip_psnr
from reftok_deploy.parity import gop_feeds
from reftok_deploy.runtimes.onnxruntime_runner import OnnxRuntimeRunner
from reftok_deploy.spec import FRAMES_IN, REFERENCE
from reftok_deploy.video import read_video

GRAPHS = ("encoder", "decoder")


def modelopt_int8(fp32_path: Path, feeds: list[dict[str, np.ndarray]], method: str, out: Path) -> Path:
    """INT8 Q/DQ copy of ``fp32_path`` by modelopt, token arithmetic excluded like ours."""
    from modelopt.onnx.quantization import quantize

    raw = out.with_suffix(".raw.onnx")
    quantize(str(fp32_path), quantize_mode="int8", calibration_data_reader=FeedReader(feeds),
             calibration_method=method, calibration_eps=["cpu"], high_precision_dtype="fp32",
             nodes_to_exclude=token_arithmetic_nodes(onnx.load(str(fp32_path))), output_path=str(raw),
             log_level="WARNING")
    with AtomicFile(out) as target:
        onnx.save(separate_shared_activation_qdq(onnx.load(str(raw))), str(target.tmp))
    return out


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--calib-data", multiple=True, required=True, type=click.Path(), help="Calibration videos/stills.")
@click.option("--calib-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--method", type=click.Choice(["max", "entropy"]), default="max", show_default=True,
              help="modelopt's calibration method.")
@click.option("--video", "videos", multiple=True, required=True, type=click.Path(), help="Held-out videos.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(8, 4096))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=7, show_default=True, type=click.IntRange(1))
@user_errors
def main(export_dir, calib_data, calib_size, method, videos, size, threads, repeats) -> None:
    fp32 = OnnxRuntimeRunner({g: export_dir / f"{g}.fp32.onnx" for g in GRAPHS}, threads=threads, name="fp32")
    ours = OnnxRuntimeRunner({g: export_dir / f"{g}.int8.onnx" for g in GRAPHS}, threads=threads,
                             name="onnxruntime-quant int8")
    enc_feeds = calibration_feeds(list(calib_data), calib_size, size=size)
    dec_feeds = decoder_feeds(enc_feeds, fp32.encode)
    with tempfile.TemporaryDirectory(prefix="reftok-modelopt-") as tmp:
        files = {g: modelopt_int8(export_dir / f"{g}.fp32.onnx", feeds, method, Path(tmp) / f"{g}.int8.onnx")
                 for g, feeds in zip(GRAPHS, (enc_feeds, dec_feeds))}
        theirs = OnnxRuntimeRunner(files, threads=threads, name=f"modelopt int8 ({method})")
        runners = [fp32, ours, theirs]
        clips = {str(v): read_video(v, size=size) for v in videos}
        block_frames = enc_feeds[0][FRAMES_IN.name].shape[2]
        held_out = [feed for _, feed in gop_feeds(clips, block_frames)]
        quality = {}
        for runner in runners:
            tokens = [runner.encode(f[REFERENCE.name], f[FRAMES_IN.name]) for f in held_out]
            psnr = np.mean([clip_psnr(f[FRAMES_IN.name], runner.decode(f[REFERENCE.name], t)) for f, t in zip(held_out, tokens)])
            quality[runner.name] = (float(psnr), tokens)
        timings: dict[str, list[float]] = {r.name: [] for r in runners}
        feed = held_out[0]
        token = quality["fp32"][1][0]
        for _ in range(repeats):
            for runner in runners:
                start = time.perf_counter()
                runner.encode(feed[REFERENCE.name], feed[FRAMES_IN.name])
                runner.decode(feed[REFERENCE.name], token)
                timings[runner.name].append(time.perf_counter() - start)
    base_psnr, base_tokens = quality["fp32"]
    base_ms = 1e3 * np.median(timings["fp32"])
    click.echo(f"{len(held_out)} GOPs at {size}x{size}, {threads} thread(s), {repeats} repeats")
    click.echo(f"{'graphs':<28}{'PSNR':>8}{'delta':>8}{'tokens=fp32':>13}{'ms/GOP':>9}{'x fp32':>8}")
    for runner in runners:
        psnr, tokens = quality[runner.name]
        agree = 100 * np.mean([np.mean(a == b) for a, b in zip(tokens, base_tokens)])
        ms = 1e3 * np.median(timings[runner.name])
        click.echo(f"{runner.name:<28}{psnr:>8.3f}{psnr - base_psnr:>+8.3f}{agree:>12.1f}%{ms:>9.1f}{base_ms / ms:>8.2f}")


if __name__ == "__main__":
    main()
