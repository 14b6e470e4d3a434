"""reftok-export: ONNX (FP32, mixed FP16, INT8 Q/DQ), validation against PyTorch, TensorRT engines, manifest."""

from __future__ import annotations

import json
import sys

import click

from reftok_deploy.cli import OneLineCommand, user_errors


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(), default=None, help="Checkpoint folder [default: shipped RefTok].")
@click.option("-o", "--out", default="reftok-export", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--fp16", is_flag=True, help="Also write the mixed-precision FP16 ONNX (and FP16 engines).")
@click.option("--int8", is_flag=True, help="Also write the INT8 Q/DQ ONNX calibrated on --calib-data.")
@click.option("--calib-data", multiple=True, type=click.Path(), help="Videos/stills/folders for INT8 calibration.")
@click.option("--calib-size", default=32, show_default=True, type=click.IntRange(1), help="Calibration GOPs.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="percentile",
              show_default=True)
@click.option("--trt-implicit-int8", is_flag=True,
              help="TensorRT <= 10: build INT8 engines from the FP32 graph with a legacy calibrator on the same frames.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True)
@click.option("--opset", default=18, show_default=True, type=click.IntRange(18, 22))
@click.option("--validate-data", multiple=True, type=click.Path(), help="Videos to validate on [default: built-in real stills under motion].")
@click.option("--validate-size", default=256, show_default=True, type=click.IntRange(8), help="Centre crop for validation (multiple of 8).")
@click.option("--max-gops", default=2, show_default=True, type=click.IntRange(1), help="Validation GOPs per clip.")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--tensorrt", type=click.Choice(["auto", "skip", "require"]), default="auto", show_default=True,
              help="Build engines when TensorRT and a GPU exist (auto), never, or fail without them.")
@click.option("--profile", default="1x64x64:1x256x256:4x1088x1920", show_default=True,
              help="TensorRT profile BxHxW min:opt:max.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@user_errors
def main(checkpoint, out, fp16, int8, calib_data, calib_size, calib_method, trt_implicit_int8, exporter, opset, validate_data,
         validate_size, max_gops, no_validate, tensorrt, profile, as_json) -> None:
    """Export the encoder (reference, frames) -> tokens and the decoder (reference, tokens) -> frames.

    Writes {encoder,decoder}.{fp32,fp16,int8}.onnx and manifest.json, checks each graph
    against TensorRT's parser rules, validates every precision against PyTorch on real
    frames, and builds TensorRT engines where TensorRT and a GPU exist. Exit 1 when
    validation or the pre-flight fails (the report says what), 2 on bad input.
    """
    from reftok_deploy.checkpoint import default_checkpoint
    from reftok_deploy.errors import ReftokError
    from reftok_deploy.export.pipeline import ExportOptions, run_export
    from reftok_deploy.engines import ShapeProfile
    from reftok_deploy.validation import validate_folder
    from reftok_deploy.video import read_video

    if validate_size % 8:
        raise ReftokError(f"--validate-size must be a multiple of 8, got {validate_size}")
    if int8 and not calib_data:
        raise ReftokError("--int8 needs --calib-data PATH... (videos, stills or folders of real frames)")
    checkpoint = checkpoint or default_checkpoint()
    precisions = ("fp32",) + (("fp16",) if fp16 else ()) + (("int8",) if int8 else ())
    clips = {str(v): read_video(v, size=validate_size) for v in validate_data} or None
    options = ExportOptions(precisions=precisions, dynamo=exporter == "dynamo", opset=opset,
                            validator=None if no_validate else validate_folder,
                            validation_clips=clips, max_gops=max_gops, tensorrt=tensorrt,
                            profile=ShapeProfile.parse(profile))
    if int8:
        from reftok_deploy.calibration.feeds import calibration_feeds
        from reftok_deploy.checkpoint import read_config

        block = read_config(checkpoint)["model"]["block_frames"]
        options.calib_feeds = calibration_feeds(list(calib_data), calib_size, size=validate_size, block_frames=block)
        options.calib_method = calib_method
        options.trt_implicit_int8 = trt_implicit_int8
    say = (lambda msg: click.echo(msg, err=True))
    manifest = run_export(checkpoint, out, options, progress=say)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, default=float))
    else:
        _summary(out, manifest)
    failed = [f"pre-flight {k}: {e}" for k, r in manifest["preflight"].items() for e in r["errors"]]
    failed += manifest.get("validation", {}).get("failures", [])
    if failed:
        click.echo(f"error: {len(failed)} check(s) failed: " + "; ".join(failed), err=True)
        sys.exit(1)


def _summary(out: str, manifest: dict) -> None:
    click.echo(f"wrote {out}/: " + ", ".join(a["file"] for a in manifest["artifacts"].values()) + ", manifest.json"
               f" in {manifest['wall_seconds']:.0f} s")
    for key, report in manifest["preflight"].items():
        click.echo(f"TensorRT pre-flight {key}: {'ok' if report['ok'] else 'FAILED'}"
                   + "".join(f"\n  warning: {w}" for w in report["warnings"]))
    for precision, r in manifest.get("validation", {}).get("reports", {}).items():
        click.echo(f"onnxruntime {precision} vs PyTorch on {r['feeds']} GOPs: tokens {100 * r['token_agreement']:.3f} % "
                   f"equal, decoder max abs {r['decoder_max_abs']:.2e}, PSNR {r['psnr_candidate_db']:.2f} dB "
                   f"({r['psnr_delta_db']:+.3f} dB) {'ok' if r['ok'] else 'FAILED'}")
    trt = manifest["tensorrt"]
    if trt["status"] == "built":
        click.echo("TensorRT engines: " + ", ".join(e["file"] for e in trt["engines"].values()))
    else:
        click.echo(f"TensorRT: {trt['status']} ({trt['reason']}); finish with: {trt['finish_command']}")
