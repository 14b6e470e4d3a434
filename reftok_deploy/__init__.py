"""reftok-deploy: RefTok, a reference-based video tokenizer, from PyTorch to ONNX, TensorRT and the camera."""

import os as _os

# OpenCV's FFmpeg backend and its own logger write to stderr from C ("moov atom not found",
# "Invalid NAL unit size"); every problem they describe reaches the user as our one-line error.
# Set before any cv2 capture starts; a user's own setting wins.
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
_os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
# PyTorch's OpenMP workers otherwise spin for a while after each call: they took the CPU from the
# runtime timed next (--backend auto, reftok-bench) and from reftok-run's capture and output threads.
# Must be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
