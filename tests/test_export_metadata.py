"""An export folder whose manifest was edited (model section, checkpoint hash) is refused: every ONNX graph
records the model it was exported from, and opening the folder holds the manifest to it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import onnx
import pytest
from click.testing import CliRunner

from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.manifest import MODEL_FIELDS, OPTIONAL_MODEL_FIELDS, onnx_facts, open_export
from reftok_deploy.model.reftok import OPTIONAL_CONFIG_KEYS, RefTokConfig
from tests.conftest import moving_still, write_video

ManifestEdit = Callable[[dict[str, Any]], None]


@pytest.fixture
def export(tiny_export) -> Path:
    """The session's untouched export of the tiny checkpoint; cases edit copies of it."""
    return tiny_export


def edited_copy(export: Path, dest: Path, edit: ManifestEdit | None = None,
                graph_edit: Callable[[dict[str, str]], None] | None = None) -> Path:
    """A copy of ``export`` whose manifest ``edit`` changes and/or whose graphs' metadata props (as a dict)
    ``graph_edit`` changes, with the manifest's hashes updated to the edited graphs."""
    shutil.copytree(export, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if graph_edit is not None:
        for entry in manifest["artifacts"].values():
            path = dest / entry["file"]
            proto = onnx.load(str(path))
            props = {p.key: p.value for p in proto.metadata_props}
            graph_edit(props)
            del proto.metadata_props[:]
            for key, value in props.items():
                proto.metadata_props.add(key=key, value=value)
            onnx.save(proto, str(path))
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if edit is not None:
        edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def refusal(folder: Path) -> str:
    with pytest.raises(ReftokError) as info:
        open_export(folder)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def model_edit(**changes: Any) -> ManifestEdit:
    return lambda manifest: manifest["model"].update(changes)


def other_levels(manifest: dict[str, Any]) -> None:
    levels = manifest["model"]["fsq_levels"]
    manifest["model"]["fsq_levels"] = levels[:-1] + [levels[-1] + 1]


def doubled_block(manifest: dict[str, Any]) -> None:
    manifest["model"]["block_frames"] *= 2


def other_checkpoint(manifest: dict[str, Any]) -> None:
    manifest["checkpoint"]["weights_sha256"] = "ab" * 32


def test_the_untouched_export_opens_and_its_graphs_record_the_manifest(export):
    opened = open_export(export)
    manifest = opened.manifest
    for entry in manifest["artifacts"].values():
        facts = onnx_facts(export / entry["file"])
        assert facts["model"] == manifest["model"]
        assert facts["model_version"] == manifest["model"]["model_version"]
        assert facts["checkpoint_sha256"] == manifest["checkpoint"]["weights_sha256"] == opened.checkpoint_sha256


EDITS: dict[str, tuple[ManifestEdit, list[str]]] = {
    "fsq_levels": (other_levels, ["says fsq_levels", "was exported with fsq_levels", ".onnx", "manifest was edited"]),
    "block_frames": (doubled_block, ["block_frames 16", "was exported with block_frames 8"]),
    "temporal_factor": (model_edit(temporal_factor=8), ["temporal_factor 8", "with temporal_factor 4"]),
    "spatial_factor": (model_edit(spatial_factor=16), ["spatial_factor 16", "exported with no spatial_factor"]),
    "channels": (model_edit(channels=[32, 64, 128]), ["channels [32,64,128]", "with channels [32,64,96]"]),
    "group_context": (model_edit(group_context=False), ["group_context false", "with group_context true"]),
    "no group_context": (lambda m: m["model"].pop("group_context"),
                         ["says group_context false", "with group_context true"]),
    "weights_sha256": (other_checkpoint, ["weights_sha256 \"abab", "exported with checkpoint weights_sha256"]),
    "model_version": (model_edit(model_version=1), ["model version 1"]),
    "fsq_levels as text": (model_edit(fsq_levels="8,5,5,5"), ["model fsq_levels must be a list", "\"8,5,5,5\""]),
    "block_frames as text": (model_edit(block_frames="8"), ["model block_frames must be a positive integer"]),
    "block_frames as float": (model_edit(block_frames=8.0), ["model block_frames must be a positive integer, got 8.0"]),
    "reference as int": (model_edit(reference=1), ["model reference must be true or false"]),
    "channels of floats": (model_edit(channels=[32.5, 64, 96]), ["model channels must be a list of 3"]),
    "no fsq_levels": (lambda m: m["model"].pop("fsq_levels"), ["model has no fsq_levels"]),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_an_edited_manifest_is_refused_in_one_line_naming_the_field(export, tmp_path, case):
    edit, fragments = EDITS[case]
    message = refusal(edited_copy(export, tmp_path / "copy", edit))
    assert all(fragment in message for fragment in fragments), message


def test_the_message_names_the_manifest_the_graph_and_both_values(export, tmp_path):
    folder = edited_copy(export, tmp_path / "copy", model_edit(fsq_levels=[8, 5, 5, 6]))
    levels = json.loads((export / "manifest.json").read_text())["model"]["fsq_levels"]
    levels = json.dumps(levels, separators=(",", ":"))
    assert refusal(folder) == (f"{folder / 'manifest.json'} says fsq_levels [8,5,5,6] but encoder.fp32.onnx was "
                               f"exported with fsq_levels {levels}: the manifest was edited; re-export")


def test_a_graph_of_another_model_version_is_refused(export, tmp_path):
    folder = edited_copy(export, tmp_path / "copy",
                         graph_edit=lambda props: props.update({"reftok.model_version": "7"}))
    assert "model version 7" in refusal(folder)


def without_model_metadata(props: dict[str, str]) -> None:
    """The graph of an export made before graphs recorded their model config and checkpoint."""
    props.pop("reftok.model_config")
    export_meta = json.loads(props["reftok.export"])
    export_meta.pop("checkpoint_sha256")
    props["reftok.export"] = json.dumps(export_meta)


def test_graphs_of_older_exports_are_held_to_what_they_record(export, tmp_path):
    legacy = edited_copy(export, tmp_path / "legacy", graph_edit=without_model_metadata)
    assert onnx_facts(legacy / "encoder.fp32.onnx")["model"] is None
    open_export(legacy)
    open_export(edited_copy(legacy, tmp_path / "legacy_levels", other_levels))  # nothing recorded to hold it to
    older = edited_copy(legacy, tmp_path / "legacy_v7", graph_edit=lambda props: props.update(
        {"reftok.model_version": "7"}))
    assert "model version 7" in refusal(older)
    assert "fsq_levels must be" in refusal(edited_copy(legacy, tmp_path / "legacy_text", model_edit(fsq_levels="8")))


def test_graphs_kept_from_an_export_made_before_group_context_match_a_manifest_with_its_default(export, tmp_path):
    def before_group_context(props: dict[str, str]) -> None:
        config = json.loads(props["reftok.model_config"])
        config.pop("group_context")
        props["reftok.model_config"] = json.dumps(config)

    folder = edited_copy(export, tmp_path / "copy", model_edit(group_context=False), graph_edit=before_group_context)
    open_export(folder)
    true = edited_copy(export, tmp_path / "true", model_edit(group_context=True), graph_edit=before_group_context)
    assert "says group_context true but encoder.fp32.onnx was exported with group_context false" in refusal(true)


def test_the_manifest_field_table_matches_the_model_config():
    assert set(MODEL_FIELDS) == {f.name for f in dataclasses.fields(RefTokConfig) if f.init}
    assert set(OPTIONAL_MODEL_FIELDS) == set(OPTIONAL_CONFIG_KEYS)
    for preset in (RefTokConfig(), RefTokConfig(group_context=True), RefTokConfig().version3()):
        assert all(valid(preset.to_dict()[key]) for key, (_, valid) in MODEL_FIELDS.items())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """A video, and a token stream of it made with the tiny checkpoint (for reftok-decode)."""
    root = tmp_path_factory.mktemp("metadata_inputs")
    video = write_video(root / "clip.avi", moving_still("chelsea", 10, 64, seed=3))
    rtok = root / "clip.rtok"
    result = CliRunner().invoke(run_main, ["--video", str(video), "--checkpoint", str(tiny_checkpoint), "--backend",
                                           "torch", "--tokens", str(rtok), "--size", "64"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"video": video, "rtok": rtok}


CLI_CASES = {
    "parity": (parity_main, ["{export}", "--checkpoint", "{ck}", "--size", "64"]),
    "run": (run_main, ["--video", "{video}", "--checkpoint", "{ck}", "--export", "{export}", "--backend",
                       "onnxruntime", "--size", "64"]),
    "decode": (decode_main, ["{rtok}", "--checkpoint", "{ck}", "--export", "{export}", "--backend", "onnxruntime"]),
}


@pytest.mark.parametrize("edit", ["fsq_levels", "block_frames", "weights_sha256", "fsq_levels as text"])
@pytest.mark.parametrize("command", list(CLI_CASES))
def test_commands_refuse_an_edited_export_with_one_error_line(export, inputs, tiny_checkpoint, tmp_path, command,
                                                              edit):
    folder = edited_copy(export, tmp_path / "copy", EDITS[edit][0])
    main, args = CLI_CASES[command]
    argv = [a.format(export=folder, ck=tiny_checkpoint, **inputs) for a in args]
    result = CliRunner().invoke(main, argv)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    field = edit.split()[0]
    assert field in errors[0] and "Traceback" not in result.stderr, result.stderr
