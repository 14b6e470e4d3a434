"""Average the weights of checkpoints of one architecture (a "model soup").

``python -m reftok_deploy.cli.average_checkpoints -o OUT CHECKPOINT CHECKPOINT [...] [--weights 1,1]`` writes a
checkpoint whose every tensor is the weighted mean of the inputs' tensors. It is meant for runs that
started from the same weights (continuations of one checkpoint with different recipes): their
average often sits between them or above both. The output's ``training`` record keeps every input's
record under ``average_of`` with the normalised ``weights``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reftok_deploy.base.errors import ReftokError

if TYPE_CHECKING:
    from reftok_deploy.model.reftok import RefTok


def average_checkpoints(folders: Sequence[str | Path], weights: Sequence[float] | None = None,
                        output: str | Path | None = None) -> tuple[RefTok, dict[str, Any]]:
    """Load ``folders`` (same architecture), average their floating-point tensors with ``weights`` (default:
    equal; other tensors must be equal in every input), return ``(model, training record)``; save to
    ``output`` when given (each file written whole or not at all; an input folder is refused)."""
    from reftok_deploy.model.checkpoint import load_checkpoint, save_checkpoint

    if len(folders) < 2:
        raise ReftokError("averaging needs at least two checkpoints")
    weights = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders):
        raise ReftokError(f"{len(weights)} weights for {len(folders)} checkpoints")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ReftokError("weights must be finite and >= 0 with a positive sum")
    if output is not None and any(Path(output).resolve() == Path(f).resolve() for f in folders):
        raise ReftokError(f"{output} is one of the inputs: write the average to another folder")
    loaded = [load_checkpoint(folder) for folder in folders]
    base = loaded[0][0]
    for folder, (model, _) in zip(folders[1:], loaded[1:]):
        if model.cfg != base.cfg:
            raise ReftokError(f"{folder} has another architecture than {folders[0]}: cannot average them")
    total = sum(weights)
    states = [model.state_dict() for model, _ in loaded]
    averaged = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            mean = sum(w * state[name].double() for w, state in zip(weights, states)) / total
            averaged[name] = mean.to(tensor.dtype)
        elif all(state[name].equal(tensor) for state in states[1:]):
            averaged[name] = tensor
        else:
            raise ReftokError(f"non-float tensor {name} differs between the checkpoints: cannot average it")
    base.load_state_dict(averaged)
    training = {"average_of": [config.get("training", {}) for _, config in loaded],
                "weights": [w / total for w in weights]}
    if output is not None:
        save_checkpoint(base, output, training)
    return base, training
