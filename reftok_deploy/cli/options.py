"""Options every command spells the same way (one vocabulary, checked by tests/test_cli_vocabulary.py).

- ``-o/--output``  what a command writes (a folder for train and export, a file for run and decode)
- ``--video``      input videos (repeatable where a command takes several)
- ``--checkpoint`` a checkpoint folder, or the run folder reftok-train wrote (its ``checkpoint/`` is used)
- ``--max-gops``   at most this many GOPs per clip
- ``--threads``    CPU threads for the model
- ``--json``       print the command's report as one JSON document
- ``-v/--verbose`` show the libraries' own messages (quiet by default)

Old spellings (``--out``, ``--gops``) still work for one release and are hidden from ``--help``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import click

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


def output_option(help: str, hidden_aliases: tuple[str, ...] = (), **kwargs: Any) -> Callable:
    return click.option("-o", "--output", *hidden_aliases, "output", cls=HiddenAliasOption,
                        hidden_aliases=hidden_aliases, help=help, **kwargs)


def max_gops_option(default: int | None, help: str = "At most this many GOPs per clip.",
                    hidden_aliases: tuple[str, ...] = ()) -> Callable:
    return click.option("--max-gops", *hidden_aliases, "max_gops", cls=HiddenAliasOption, hidden_aliases=hidden_aliases,
                        type=click.IntRange(1), default=default, show_default=default is not None, help=help)


def _set_torch_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """PyTorch's intra-op threads are per process: set once here for every command; runtimes that keep
    their own pools (onnxruntime, OpenVINO) get the value through the command."""
    if value is not None:
        import torch

        torch.set_num_threads(value)
    return value


def threads_option(func: Callable) -> Callable:
    return click.option("--threads", type=click.IntRange(1), default=None, callback=_set_torch_threads,
                        help="CPU threads for the model [default: the runtime's own choice].")(func)


def streams_option(func: Callable) -> Callable:
    return click.option("--streams", type=click.IntRange(1, 16), default=1, show_default=True,
                        help="Blocks encoded + decoded side by side, each by its own copy of the model on "
                             "--threads / STREAMS threads [--threads default here: the cores this process may "
                             "use] (CPU backends): more frames per second where one copy cannot keep every "
                             "core busy, each block taking longer.")(func)


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
