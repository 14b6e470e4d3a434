"""Console scripts. Each turns :class:`ReftokError` into one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import click

from reftok_deploy.errors import ReftokError

F = TypeVar("F", bound=Callable)


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
