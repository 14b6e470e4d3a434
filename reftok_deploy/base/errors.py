"""User-facing failures and warnings: one line each on stderr, and the exit codes the commands document.

Exit codes of every console script:
    0  done
    1  a check failed (export validation, parity tolerance, TensorRT pre-flight); the report says which
    2  bad input or an output that could not be written: one ``error:`` line, nothing left behind
    3  done, but an input was damaged (e.g. a truncated video): processed as far as it reads, with a
       ``warning:`` line saying how far
  130  interrupted (Ctrl-C, SIGTERM); what was written so far is kept
"""

from __future__ import annotations

import sys

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED_INPUT = 3
EXIT_INTERRUPTED = 130


class ReftokError(Exception):
    """A problem with the user's input (path, file, shape, device) described in one line."""

    exit_code = EXIT_BAD_INPUT


_damaged: list[str] = []


def report_damaged_input(message: str) -> None:
    """Say once on stderr that an input was damaged and processed only in part (``warning: message``);
    the command then ends with exit code 3 instead of 0."""
    if message not in _damaged:
        _damaged.append(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def damaged_inputs() -> list[str]:
    """What :func:`report_damaged_input` was told since the last :func:`forget_damaged_inputs`."""
    return list(_damaged)


def forget_damaged_inputs() -> None:
    """Start a command with no damaged input on record (a command run in-process resets it)."""
    _damaged.clear()
