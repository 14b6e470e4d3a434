"""Export and calibration stay quiet: library chatter is dropped or sent to the debug log at its source,
and the calibration cache is written like every other artefact."""

import logging
import os
import stat

import onnx
import pytest

from reftok_deploy.calibration.qdq import quantize_qdq
from reftok_deploy.model.data import demo_clips
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import atomic_write_bytes
from reftok_deploy.base.spec import encoder_feed

from tests.conftest import EXPORTER_NOTICE_LOGGER as NOTICE_LOGGER


class Catch(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_dynamo_export_logs_no_torchvision_notice(exported):
    """torch's dynamo exporter warned "torchvision is not installed. Skipping torchvision::nms" (and three
    more ops) per graph; RefTok uses no torchvision op. Only that notice is dropped, at its logger (a handler
    there sees what would reach the console: pytest's capture cannot see torch's own stderr handler). The
    session's dynamo export of both graphs recorded what that logger emitted."""
    exported("dynamo")
    assert not [m for m in exported.logged["dynamo"] if "torchvision" in m], exported.logged["dynamo"]
    # Other records of the same logger still get through.
    logger, catch = logging.getLogger(NOTICE_LOGGER), Catch()
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(catch)
    try:
        logger.warning("torchvision is not installed. Skipping torchvision::nms")
        logger.warning("some other exporter warning")
    finally:
        logger.removeHandler(catch)
        logger.setLevel(level)
    assert catch.messages == ["some other exporter warning"]


def test_calibration_chatter_goes_to_the_debug_log_and_cache_mode_follows_umask(exported, tmp_path, capfd, caplog):
    fp32 = onnx.load(str(exported("torchscript")["encoder"]))
    feeds = [encoder_feed(clip[0], clip[1:9]) for clip in demo_clips(size=64, gops=1).values()][:2]
    cache = tmp_path / "encoder.int8.percentile.calib.json"
    with caplog.at_level(logging.DEBUG, logger="reftok_deploy.calibration.qdq"):
        quantize_qdq(fp32, feeds, "percentile", cache)
    out, err = capfd.readouterr()
    assert "Percentile" not in out + err and "histogram" not in out + err, out + err
    assert any("Percentile : (" in r.getMessage() for r in caplog.records)  # kept for -v
    # ONNX Runtime writes its cache 0600 (mkstemp); ours is written like any other artefact.
    atomic_write_bytes(tmp_path / "other.json", b"{}")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(cache.stat().st_mode) == stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == 0o666 & ~umask
    # A cache reused from disk gives the same graph and keeps its contents.
    before = cache.read_bytes()
    again = quantize_qdq(fp32, feeds[:1], "percentile", cache)
    assert cache.read_bytes() == before and len(again.graph.node) > 0


def test_calibration_errors_still_surface(exported, tmp_path):
    """Silencing prints hides no failure: a corrupt cache is still one clear error."""
    fp32 = onnx.load(str(exported("torchscript")["encoder"]))
    cache = tmp_path / "bad.calib.json"
    cache.write_text("{ truncated")
    with pytest.raises(ReftokError, match="is corrupt"):
        quantize_qdq(fp32, [], "percentile", cache)


def test_calibrating_a_dynamo_graph_at_another_size_prints_no_shape_warnings(exported, tmp_path, capfd):
    """dynamo annotates tensors with dims written as expressions of the input sizes; ONNX Runtime's calibration
    read them as the sizes traced (64x64: the 1/8-scale cost volume one tile wide) and warned once per matrix
    product and GOP when calibrating at 256x256. The calibrator now infers shapes from a clean graph."""
    fp32 = onnx.load(str(exported("dynamo")["encoder"]))
    feeds = [encoder_feed(clip[0], clip[1:9]) for clip in demo_clips(size=256, gops=1).values()][:1]
    quantize_qdq(fp32, feeds, "percentile", tmp_path / "encoder.int8.percentile.calib.json")
    out, err = capfd.readouterr()
    assert "VerifyOutputSizes" not in out + err and "Expected shape" not in out + err, (out + err)[-2000:]
