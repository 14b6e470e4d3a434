"""reftok-deploy: RefTok, a reference-based video tokenizer, from PyTorch to ONNX, TensorRT and the camera."""

__version__ = "0.1.0"
