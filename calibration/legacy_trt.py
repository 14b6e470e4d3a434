"""TensorRT <= 10 implicit INT8: an IInt8 calibrator (Polygraphy's) fed by the same feeds and a cache file.

TensorRT 11 removed implicit INT8 calibration; there the Q/DQ graphs of
:mod:`reftok_deploy.calibration.qdq` are the only INT8 path. Imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reftok_deploy.base.errors import ReftokError


def legacy_calibrator(feeds: list[dict[str, np.ndarray]], cache: str | Path, algorithm: str = "entropy2"):
    """A Polygraphy ``Calibrator`` over ``feeds`` that reads/writes ``cache``; refuses TensorRT >= 11."""
    import tensorrt as trt
    from polygraphy.backend.trt import Calibrator

    if int(str(trt.__version__).split(".")[0]) >= 11:
        raise ReftokError("TensorRT >= 11 has no implicit INT8 calibration: use the Q/DQ INT8 ONNX (reftok-export --int8)")
    base = {"entropy2": trt.IInt8EntropyCalibrator2, "minmax": trt.IInt8MinMaxCalibrator}.get(algorithm)
    if base is None:
        raise ReftokError(f"unknown TensorRT calibrator {algorithm!r}: entropy2 or minmax")
    return Calibrator(data_loader=feeds, cache=str(cache), BaseClass=base)
