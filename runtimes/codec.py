"""Pre/post-processing done once for every backend: RGB uint8 frames <-> padded model-range tensors.

Frames are ``[H,W,3]`` uint8 RGB of any size; they are edge-padded to the model's
spatial multiple for the graphs and cropped back after decoding.
"""

from __future__ import annotations

import numpy as np

from reftok_deploy.runtimes.runner import Runner
from reftok_deploy.base.spec import FRAMES_IN, REFERENCE, encoder_feed, frames_to_tensor_range, tensor_range_to_frames


class FrameCodec:
    """Encode/decode one block against a reference, on any runner."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def _pad(self, frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[-3:-1]
        m = self.runner.spatial_factor
        pad = [(0, 0)] * (frames.ndim - 3) + [(0, (-h) % m), (0, (-w) % m), (0, 0)]
        return np.pad(frames, pad, mode="edge") if pad[-3][1] or pad[-2][1] else frames

    def encode(self, reference: np.ndarray, block: np.ndarray) -> np.ndarray:
        """(reference ``[H,W,3]``, block ``[T,H,W,3]``) uint8 RGB -> tokens ``[G,h,w]`` int32."""
        feed = encoder_feed(self._pad(reference), self._pad(block))
        return self.runner.encode(feed[REFERENCE.name], feed[FRAMES_IN.name])[0]

    def decode(self, reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """(reference ``[H,W,3]`` uint8 RGB, tokens ``[G,h,w]``) -> block ``[T,H,W,3]`` uint8 RGB."""
        h, w = reference.shape[:2]
        ref = frames_to_tensor_range(self._pad(reference))[None]
        out = self.runner.decode(ref, np.ascontiguousarray(tokens[None], dtype=np.int32))[0]  # [3,T,H',W']
        return tensor_range_to_frames(np.moveaxis(out, 1, 0))[:, :h, :w]

    def encode_many(self, references: list[np.ndarray], blocks: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`encode` of GOPs of one frame size in one batch of the graphs -> their tokens, in order."""
        feeds = [encoder_feed(self._pad(r), self._pad(b)) for r, b in zip(references, blocks)]
        tokens = self.runner.encode(np.concatenate([f[REFERENCE.name] for f in feeds]),
                                    np.concatenate([f[FRAMES_IN.name] for f in feeds]))
        return list(tokens)

    def decode_many(self, references: list[np.ndarray], tokens: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`decode` of GOPs of one frame size in one batch of the graphs -> their blocks, in order."""
        h, w = references[0].shape[:2]
        refs = np.stack([frames_to_tensor_range(self._pad(r)) for r in references])
        out = self.runner.decode(refs, np.ascontiguousarray(np.stack(tokens), dtype=np.int32))  # [B,3,T,H',W']
        return [tensor_range_to_frames(np.moveaxis(o, 1, 0))[:, :h, :w] for o in out]
