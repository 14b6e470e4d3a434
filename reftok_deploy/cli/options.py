"""Options every command spells the same way (one vocabulary, checked by tests/test_cli_vocabulary.py).

- ``-o/--output``  what a command writes (a folder for train and export, a file for run and decode)
- ``--video``      input videos (repeatable where a command takes several)
- ``--checkpoint`` a checkpoint folder, or the run folder reftok-train wrote (its ``checkpoint/`` is used)
- ``--max-gops``   at most this many GOPs per clip
- ``--threads``    CPU threads for the model
- ``--device``     cpu, cuda or cuda:N
- ``--json``       print the command's report as one JSON document
- ``-v/--verbose`` show the libraries' own messages (quiet by default)

Old spellings (``--out``, ``--gops``) still work for one release and are hidden from ``--help``.

Every number a command takes has a range that means something: floats are finite and bounded, integers
are bounded by what the machine can do (``--threads`` at most 4x its cores). A value outside is one
``error:`` line before any work.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import click

from reftok_deploy.base.machine import usable_cores

# More threads than this only oversubscribes the cores (and a huge count made libgomp reserve 216 GB).
MAX_THREADS = 4 * usable_cores()
MAX_COUNT = 10**9  # frames, GOPs, steps: bounds that keep an int an int in every library it reaches


class FiniteFloatRange(click.FloatRange):
    """A float within [min, max] that is a number: ``nan`` and ``inf`` are refused (click's FloatRange
    lets nan through, every comparison with it being false)."""

    name = "float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


LIBRARY_LOGGERS = ("torch", "onnx", "onnxscript", "onnxruntime", "onnx_ir", "polygraphy", "openvino", "numba")


class HiddenAliasOption(click.Option):
    """An option whose old spellings are accepted but left out of ``--help``."""

    def __init__(self, *args: Any, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx: click.Context):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown

    def get_error_hint(self, ctx: click.Context) -> str:
        return " / ".join(f"'{o}'" for o in self.opts if o not in self.hidden_aliases)


# Said in the --help of every output option: one rule for all of them (see reftok_deploy.base.paths).
OUTPUT_RULE = "Missing parent folders are created; an input of the command is never overwritten."


def output_option(help: str, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> Callable:
    return click.option("-o", "--output", *hidden_aliases, "output", cls=HiddenAliasOption,
                        hidden_aliases=hidden_aliases, help=f"{help} {OUTPUT_RULE}", **kwargs)


def max_gops_option(default: int | None, help: str = "At most this many GOPs per clip.",
                    hidden_aliases: tuple[str, ...] = ()) -> Callable:
    return click.option("--max-gops", *hidden_aliases, "max_gops", cls=HiddenAliasOption, hidden_aliases=hidden_aliases,
                        type=click.IntRange(1, MAX_COUNT), default=default, show_default=default is not None, help=help)


def _set_torch_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """PyTorch's intra-op threads are per process: set once here for every command; runtimes that keep
    their own pools (onnxruntime, OpenVINO) get the value through the command."""
    if value is not None:
        import torch

        torch.set_num_threads(value)
    return value


def threads_option(func: Callable) -> Callable:
    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, callback=_set_torch_threads,
                        help=f"CPU threads for the model, at most 4x the cores ({MAX_THREADS} here) "
                             "[default: the runtime's own choice].")(func)


def streams_option(func: Callable) -> Callable:
    return click.option("--streams", type=click.IntRange(1, 16), default=1, show_default=True,
                        help="Blocks encoded + decoded side by side, each by its own copy of the model on "
                             "--threads / STREAMS threads [--threads default here: the cores this process may "
                             "use] (CPU backends): more frames per second where one copy cannot keep every "
                             "core busy, each block taking longer.")(func)


def gop_options(func: Callable) -> Callable:
    """--refresh-blocks and --cut-threshold: how reftok-run, reftok-eval and reftok-tokenize form GOPs, spelled and
    bounded once so that the three commands form the same GOPs from the same words."""
    from reftok_deploy.base.gop_plan import DEFAULT_CUT_THRESHOLD

    func = click.option("--cut-threshold", default=DEFAULT_CUT_THRESHOLD, show_default=True,
                        type=FiniteFloatRange(0, 255),
                        help="Scene-cut score (mean absolute change, 0-255 levels) above which a frame starts a new "
                             "reference, before it is encoded; 0 disables. The same in reftok-run, -eval and "
                             "-tokenize.")(func)
    return click.option("--refresh-blocks", default=1, show_default=True, type=click.IntRange(1, MAX_COUNT),
                        help="New reference after this many blocks.")(func)


# The backends, spelled once for every --backend, --backends, --a and --b help (the first precision of each is its
# default); reftok_deploy.runtimes.factory.parse_spec is what accepts them.
BACKEND_CHOICES = "torch | onnxruntime[:fp32|fp16|int8] | openvino[:fp32|fp16|int8|bf16] | tensorrt[:fp16|fp32|int8]"
AUTO_BACKEND = "auto (the fastest backend that passes parity with PyTorch here, measured once per machine and size)"


def backend_option(help: str = f"{AUTO_BACKEND} | {BACKEND_CHOICES}.") -> Callable:
    return click.option("--backend", default="auto", show_default=True, help=help)


def export_option(func: Callable) -> Callable:
    return click.option("--export", "export_folder", type=click.Path(), default=None,
                        help="reftok-export folder (ONNX/engines) [default: for onnxruntime and OpenVINO, the "
                             "checkpoint's FP32 export in the user cache, made once; TensorRT needs one].")(func)


# Every --size: the same bounds everywhere (below 16 pixels SSIM's window and x264 fail); commands whose graphs
# run at the size itself say "a multiple of 8". reftok-bench's N|WxH sizes hold to the same (throughput.parse_size).
MIN_SIZE, MAX_SIZE = 16, 4096
SIZE_RANGE = click.IntRange(MIN_SIZE, MAX_SIZE)


def _multiple_of_8(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value % 8:
        raise click.BadParameter(f"must be a multiple of 8, got {value}", ctx, param)
    return value


def size_option(help: str, default: int | None = None, multiple_of_8: bool = False) -> Callable:
    bounds = f"from {MIN_SIZE} to {MAX_SIZE}"
    rule = f" A multiple of 8, {bounds}." if multiple_of_8 else f" Any size {bounds} (padded for the model)."
    return click.option("--size", type=SIZE_RANGE, default=default, show_default=default is not None,
                        callback=_multiple_of_8 if multiple_of_8 else None, help=help + rule)


def check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """--device is cpu, cuda or cuda:N: anything else is refused while parsing, before any work."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", value):
        raise click.BadParameter(f"{value!r}: use cpu, cuda or cuda:N", ctx, param)
    return value


def device_option(help: str = "cpu, cuda or cuda:N (torch / onnxruntime).") -> Callable:
    return click.option("--device", default="cpu", show_default=True, callback=check_device, help=help)


def json_option(help: str = "Print the report as one JSON document.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def videos_option(help: str = "A video file; repeat for several.") -> Callable:
    return click.option("--video", "videos", multiple=True, type=click.Path(), help=help)


def resolve_checkpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A run folder written by reftok-train (``RUN/checkpoint/config.json``) means its checkpoint."""
    if value is None:
        return None
    path = Path(value)
    if not (path / "config.json").is_file() and (path / "checkpoint" / "config.json").is_file():
        return str(path / "checkpoint")
    return value


def checkpoint_option(help: str = "Checkpoint folder, or a reftok-train run folder [default: shipped RefTok].") -> Callable:
    return click.option("--checkpoint", type=click.Path(), default=None, callback=resolve_checkpoint, help=help)


def quiet_libraries(verbose: bool) -> None:
    """Quiet by default: the libraries' warnings and log lines are hidden unless ``-v``; with ``-v`` they
    and this package's debug log (e.g. ONNX Runtime's calibration progress) are shown."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        logging.getLogger("reftok_deploy").setLevel(logging.DEBUG)
        return
    warnings.filterwarnings("ignore")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_opencv_and_ffmpeg()


def quiet_opencv_and_ffmpeg() -> None:
    """OpenCV's ``[ERROR:0@...]`` lines and FFmpeg's ``[mov,mp4 @ ...]`` lines off stderr: the command's own
    one line says what went wrong. FFmpeg's level is read when OpenCV first uses it (AV_LOG_QUIET = -8)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is not None and hasattr(log, "setLogLevel"):
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):  # older bindings (Debian's 4.6): 0 = silent
        try:
            cv2.setLogLevel(0)
        except Exception:
            pass


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # What quiet_libraries changes is process-wide: put it back when the command ends, so a command
    # run in-process (the Python API, tests) leaves the caller's logging and warnings as they were.
    ctx.with_resource(warnings.catch_warnings())  # the warning filters, restored on close
    root, package = logging.getLogger(), logging.getLogger("reftok_deploy")
    saved = (root.level, root.handlers[:], package.level, {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS})

    def restore() -> None:
        root_level, handlers, package_level, levels = saved
        root.setLevel(root_level)
        root.handlers[:] = handlers
        package.setLevel(package_level)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    ctx.call_on_close(restore)
    quiet_libraries(value)
    return value


def verbose_option(func: Callable) -> Callable:
    return click.option("-v", "--verbose", is_flag=True, is_eager=True, expose_value=False, callback=_verbose_callback,
                        help="Show the libraries' own warnings and log messages (hidden by default).")(func)
