"""The encoder and decoder trace with both exporters and run in onnxruntime with matching outputs."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from reftok_deploy.export.onnx_export import export_graph
from tests.conftest import moving_still


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_encoder_and_decoder_export_and_match(tmp_path, tiny_model, dynamo):
    enc = session(export_graph(tiny_model, "encoder", tmp_path / "encoder.onnx", dynamo=dynamo))
    dec = session(export_graph(tiny_model, "decoder", tmp_path / "decoder.onnx", dynamo=dynamo))
    # Other batch and size than traced with: the axes are really dynamic.
    clip = torch.from_numpy(moving_still("astronaut", 9, 48).astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)
    clip = torch.stack([clip, clip.flip(-1)])[..., :40]  # [2,3,9,48,40]
    reference, frames = clip[:, :, 0].contiguous(), clip[:, :, 1:].contiguous()
    with torch.no_grad():
        want_tokens = tiny_model.encode(reference, frames)
        want_frames = tiny_model.decode(reference, want_tokens)
    (tokens,) = enc.run(None, {"reference": reference.numpy(), "frames": frames.numpy()})
    assert tokens.dtype == np.int32 and tokens.shape == (2, 2, 6, 5)
    assert (tokens == want_tokens.numpy()).mean() >= 0.999
    (decoded,) = dec.run(None, {"reference": reference.numpy(), "tokens": want_tokens.numpy()})
    assert decoded.shape == (2, 3, 8, 48, 40)
    assert np.abs(decoded - want_frames.numpy()).max() <= 1e-4
