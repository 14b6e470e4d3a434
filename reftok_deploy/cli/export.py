"""reftok-export: ONNX (FP32, mixed FP16, INT8 Q/DQ), validation against PyTorch, TensorRT engines, manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from tqdm import tqdm

from reftok_deploy.base.engines import ShapeProfile
from reftok_deploy.base.errors import EXIT_CHECK_FAILED, ReftokError
from reftok_deploy.base.manifest import MANIFEST
from reftok_deploy.base.paths import OutputPlan
from reftok_deploy.base.spec import GRAPH_NAMES, artifact_name
from reftok_deploy.cli import ManyValuesOption, OneLineCommand, user_errors
from reftok_deploy.cli.options import (SIZE_RANGE, checkpoint_option, json_option, max_gops_option, output_option,
                                       threads_option, verbose_option)
from reftok_deploy.deploy.deployment import shipped_checkpoint
from reftok_deploy.model.checkpoint import read_config
from reftok_deploy.export.tensorrt_check import check_tensorrt
from reftok_deploy.export.triton_repo import check_triton_target, write_triton_repository


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@checkpoint_option()
@output_option("Output folder; exporting into an earlier export of the same checkpoint keeps its other precisions.",
               hidden_aliases=("--out",), default="reftok-export", show_default=True, type=click.Path(file_okay=False))
@click.option("--fp16", is_flag=True, help="Also write the mixed-precision FP16 ONNX (and FP16 engines).")
@click.option("--int8", is_flag=True, help="Also write the INT8 Q/DQ ONNX calibrated on --calib-data.")
@click.option("--calib-data", cls=ManyValuesOption, type=click.Path(), metavar="PATH [PATH...]",
              help="Videos, stills or folders of them for INT8 calibration; several paths may follow one flag.")
@click.option("--calib-size", default=32, show_default=True, type=click.IntRange(1, 100_000),
              help="Calibration GOPs (a video gives one per 9 frames, a still 4); fewer data: all of it is used.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="percentile",
              show_default=True, help="How INT8 activation ranges are set from the calibration frames: their "
                                      "extremes (minmax), the least information lost (entropy), or a high "
                                      "percentile that ignores rare outliers (percentile).")
@click.option("--trt-implicit-int8", is_flag=True,
              help="TensorRT <= 10: build INT8 engines from the FP32 graph with a legacy calibrator on the same frames.")
@click.option("--exporter", type=click.Choice(["dynamo", "torchscript"]), default="dynamo", show_default=True,
              help="PyTorch's ONNX exporter: torch.export (dynamo) or the older TorchScript tracer (faster to run).")
@click.option("--opset", default=18, show_default=True, type=click.IntRange(18, 22),
              help="ONNX opset of the graphs, 18 to 22 (the runtimes on the target must support it).")
@click.option("--validate-data", multiple=True, type=click.Path(), help="Videos to validate on [default: built-in real stills under motion].")
@click.option("--validate-size", default=256, show_default=True, type=SIZE_RANGE,
              help="Centre crop for validation (and INT8 calibration). A multiple of 8, from 16 to 4096.")
@max_gops_option(2, "Validation GOPs per clip.")
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--tensorrt", type=click.Choice(["auto", "skip", "require"]), default="auto", show_default=True,
              help="Build engines when TensorRT and a GPU exist (auto), never, or fail without them.")
@click.option("--profile", default="1x64x64:1x256x256:4x1088x1920", show_default=True,
              help="TensorRT profile BxHxW min:opt:max.")
@threads_option
@click.option("--triton", "triton_repo", type=click.Path(file_okay=False), default=None,
              help="Also write a Triton Inference Server model repository of this export into this folder "
                   "(onnxruntime and OpenVINO models, TensorRT where engines were built).")
@json_option("Print the manifest as JSON.")
@verbose_option
@user_errors
def main(checkpoint, output, fp16, int8, calib_data, calib_size, calib_method, trt_implicit_int8, exporter, opset, validate_data,
         validate_size, max_gops, no_validate, tensorrt, profile, threads, triton_repo, as_json) -> None:
    """Export the encoder (reference, frames) -> tokens and the decoder (reference, tokens) -> frames.

    Writes {encoder,decoder}.{fp32,fp16,int8}.onnx and manifest.json, checks each graph
    against TensorRT's parser rules, validates every precision against PyTorch on real
    frames, and builds TensorRT engines where TensorRT and a GPU exist. Exit 1 when
    validation or the pre-flight fails (the report says what), 2 on bad input.
    """
    if calib_data and not int8:
        raise ReftokError("--calib-data is for --int8 (calibration frames); add --int8 or drop --calib-data")
    if validate_size % 8:
        raise ReftokError(f"--validate-size must be a multiple of 8, got {validate_size}")
    if int8 and not calib_data:
        raise ReftokError("--int8 needs --calib-data PATH... (videos, stills or folders of real frames)")
    check_tensorrt(tensorrt)  # before any work: an export takes a minute
    checkpoint = checkpoint or shipped_checkpoint()
    precisions = ("fp32",) + (("fp16",) if fp16 else ()) + (("int8",) if int8 else ())
    profile_shapes = ShapeProfile.parse(profile)
    if triton_repo:
        check_triton_target(Path(output), Path(triton_repo))
    plan = OutputPlan()  # every path before any work; a failed export into a new folder leaves no folder
    plan.reads(checkpoint, "the checkpoint")
    for path in (*calib_data, *validate_data):
        plan.reads(path, "the data")
    plan.folder(output, "--output", writes=[artifact_name(g, p) for g in GRAPH_NAMES for p in precisions] + [MANIFEST])
    with plan:
        manifest = _export(checkpoint, output, precisions, int8, calib_data, calib_size, calib_method, trt_implicit_int8,
                           exporter, opset, validate_data, validate_size, max_gops, no_validate, tensorrt, profile_shapes)
    if as_json:
        click.echo(json.dumps(manifest, indent=2, default=float))
    else:
        _summary(output, manifest)
    failed = [f"pre-flight {k}: {e}" for k, r in manifest["preflight"].items() for e in r["errors"]]
    failed += manifest.get("validation", {}).get("failures", [])
    if failed:
        click.echo(f"error: {len(failed)} check(s) failed: " + "; ".join(failed), err=True)
        sys.exit(EXIT_CHECK_FAILED)
    if triton_repo:
        models = write_triton_repository(output, triton_repo)
        click.echo(f"wrote the Triton model repository {triton_repo}/ ({len(models)} models; see its README.md)",
                   err=as_json)


def _export(checkpoint, output, precisions, int8, calib_data, calib_size, calib_method, trt_implicit_int8, exporter,
            opset, validate_data, validate_size, max_gops, no_validate, tensorrt, profile) -> dict:
    """reftok-export's work once every path is checked -> the manifest."""
    from reftok_deploy.base.video import read_video  # OpenCV, torch: not for --help
    from reftok_deploy.deploy.validation import validate_folder
    from reftok_deploy.export.job import ExportOptions, run_export

    clips = {str(v): read_video(v, size=validate_size) for v in validate_data} or None
    options = ExportOptions(precisions=precisions, dynamo=exporter == "dynamo", opset=opset,
                            validator=None if no_validate else validate_folder,
                            validation_clips=clips, max_gops=max_gops, tensorrt=tensorrt, profile=profile)
    if int8:
        from reftok_deploy.calibration.feeds import calibration_feeds  # torch: not for --help

        block = read_config(checkpoint)["model"]["block_frames"]
        options.calib_feeds = calibration_feeds(list(calib_data), calib_size, size=validate_size, block_frames=block,
                                                warn=lambda line: click.echo(line, err=True))
        options.calib_method = calib_method
        options.trt_implicit_int8 = trt_implicit_int8
    # Each phase is one line on stderr; on a terminal a status line also shows the phase and the time so far.
    status = tqdm(total=None, bar_format="{desc} [{elapsed}]", disable=None, leave=False)

    def say(msg: str) -> None:
        status.set_description_str(msg)
        tqdm.write(msg, file=sys.stderr)

    try:
        return run_export(checkpoint, output, options, progress=say)
    finally:
        status.close()


def describe_checks(report: dict) -> str:
    """Each measured figure of a parity report beside the limit it was held to ("not limited" where none)."""
    tol = report.get("tolerance", {})

    def limit(key: str, text: str) -> str:
        value = tol.get(key)
        unlimited = value is None or value == float("inf") or (key == "min_token_agreement" and value <= 0)
        return "not limited" if unlimited else text.format(value)

    return (f"PSNR {report['psnr_candidate_db']:.2f} dB ({report['psnr_delta_db']:+.3f} dB, "
            f"{limit('max_psnr_delta_db', 'limit -{:g} dB')}), decoder mean abs {report['decoder_mean_abs']:.1e} "
            f"({limit('max_mean_abs_frames', 'limit {:.0e}')}), max abs {report['decoder_max_abs']:.1e} "
            f"({limit('max_abs_frames', 'limit {:.0e}')}), tokens {100 * report['token_agreement']:.2f} % equal "
            f"({limit('min_token_agreement', 'limit {:.1%}')})")


def _summary(out: str, manifest: dict) -> None:
    click.echo(f"wrote {out}/: " + ", ".join(a["file"] for a in manifest["artifacts"].values()) + ", manifest.json"
               f" in {manifest['wall_seconds']:.0f} s")
    for key, report in manifest["preflight"].items():
        click.echo(f"TensorRT pre-flight {key}: {'ok' if report['ok'] else 'FAILED'}"
                   + "".join(f"\n  warning: {w}" for w in report["warnings"]))
    for precision, r in manifest.get("validation", {}).get("reports", {}).items():
        click.echo(f"onnxruntime {precision} vs PyTorch on {r['feeds']} GOPs: {describe_checks(r)}: "
                   f"{'ok' if r['ok'] else 'FAILED'}")
    trt = manifest["tensorrt"]
    if trt["status"] == "built":
        click.echo("TensorRT engines: " + ", ".join(e["file"] for e in trt["engines"].values()))
    else:
        click.echo(f"TensorRT: {trt['status']} ({trt['reason']}); finish with: {trt['finish_command']}")
