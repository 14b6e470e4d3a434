"""python -m reftok_deploy.cli.average_checkpoints -o OUT CHECKPOINT CHECKPOINT [...] [--weights 1,1]: average checkpoints
(see :mod:`reftok_deploy.model.average`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.average import average_checkpoints


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reftok_deploy.cli.average_checkpoints",
                                     description="Average the weights of checkpoints of one architecture.")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (config.json + model.safetensors)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the averaged checkpoint")
    parser.add_argument("--weights", help="comma-separated weight per checkpoint (default: equal)")
    args = parser.parse_args(argv)
    try:
        weights = None if args.weights is None else [float(w) for w in args.weights.split(",")]
    except ValueError:
        parser.error(f"--weights: not a comma-separated list of numbers: {args.weights}")
    try:
        average_checkpoints(args.checkpoints, weights, args.output)
    except ReftokError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
