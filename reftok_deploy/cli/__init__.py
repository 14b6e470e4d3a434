"""Console scripts. Each turns :class:`ReftokError` into one line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from typing import Callable, TypeVar

import click

from reftok_deploy.errors import ReftokError

F = TypeVar("F", bound=Callable)


class OneLineCommand(click.Command):
    """A click command whose usage errors (bad option, missing argument, value out of range) are one
    ``error:`` line and exit 2, like every other user error, instead of click's three-line usage block."""

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
            sys.exit(130)


def user_errors(func: F) -> F:
    """Report ReftokError (and Ctrl-C) as one line; everything else keeps its traceback (a bug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ReftokError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

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
