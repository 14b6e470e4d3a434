"""Console scripts. Each turns :class:`ReftokError` into one line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from typing import Callable, TypeVar

import click

from reftok_deploy.base.errors import (EXIT_BAD_INPUT, EXIT_DAMAGED_INPUT, EXIT_INTERRUPTED, ReftokError, damaged_inputs,
                                  forget_damaged_inputs)
from reftok_deploy.base.files import WRITE_ERRNOS

F = TypeVar("F", bound=Callable)


class ManyValuesOption(click.Option):
    """A ``multiple=True`` option that also takes the plain words right after its value:
    ``--calib-data a.mp4 b.mp4 -o out`` is ``--calib-data a.mp4 --calib-data b.mp4 -o out``
    (see :meth:`OneLineCommand.parse_args`). A word anywhere else is still an unexpected argument.
    Long names only, on commands without positional arguments (it would take theirs); a later
    path that starts with ``-`` needs ``--name=PATH``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)


def spread_many_values(args: list[str], names: set[str]) -> list[str]:
    """``args`` with each plain word that follows a value of an option in ``names`` given that
    option again; everything after ``--`` is left as it is."""
    out: list[str] = []
    option, expects_value = None, False
    for index, arg in enumerate(args):
        if arg == "--":
            return out + args[index:]
        if expects_value:  # the option's own value, whatever it looks like
            out.append(arg)
            expects_value = False
        elif arg.startswith("-") and arg != "-":
            name = arg.split("=", 1)[0]
            option = name if name in names else None
            expects_value = option is not None and "=" not in arg
            out.append(arg)
        elif option is not None:
            out += [option, arg]
        else:
            out.append(arg)
    return out


class OneLineCommand(click.Command):
    """A click command whose usage errors (bad option, missing argument, value out of range) are one
    ``error:`` line and exit 2, like every other user error, instead of click's three-line usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {name for p in self.params if isinstance(p, ManyValuesOption) for name in p.opts}
        return super().parse_args(ctx, spread_many_values(list(args), names) if names else args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        import importlib.util

        if importlib.util.find_spec("cv2") is None:
            click.echo("error: OpenCV is not installed: pip install 'reftok-deploy[opencv]' (or [gui] for windows), "
                       "or on a GStreamer/Jetson box use the system OpenCV (apt install python3-opencv) from a "
                       "venv made with --system-site-packages", err=True)
            sys.exit(2)
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if isinstance(exc, click.NoSuchOption) and exc.possibilities:
                hidden = {alias for p in self.params for alias in getattr(p, "hidden_aliases", ())}
                exc.possibilities = [p for p in exc.possibilities if p not in hidden]  # no retired spellings
            click.echo(f"error: {exc.format_message()} (see {exc.ctx.command_path if exc.ctx else prog_name or self.name} "
                       "--help)", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def user_errors(func: F) -> F:
    """Report ReftokError, a failed write (disk full, I/O error) and Ctrl-C as one line with the exit codes
    of :mod:`reftok_deploy.base.errors`; a command that finished on a damaged input exits 3. Everything else
    keeps its traceback (a bug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        forget_damaged_inputs()
        try:
            result = func(*args, **kwargs)
        except ReftokError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            # a write outside AtomicFile (a library's writer): the file and the reason, whatever was being done
            click.echo(f"error: {exc.filename or 'output'}: {exc.strerror or exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if damaged_inputs():
            sys.exit(EXIT_DAMAGED_INPUT)
        return result

    return wrapper  # type: ignore[return-value]


def _interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (systemd, docker stop, kill) like Ctrl-C inside the block: outputs are kept."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
