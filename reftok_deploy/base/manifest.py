"""manifest.json of an export folder: what was written, from what, with which tools, and how it validated.

Reading a manifest checks its format, the model version, the types of its model section, and every
artefact's sha256, so a runtime never runs a file it did not expect. Opening a folder also holds the
manifest to what each ONNX graph records of itself (model config, checkpoint), so an edited manifest
cannot pass a graph off as another model.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from reftok_deploy.base.files import atomic_write_bytes, read_json_object, sha256_file
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.spec import MODEL_VERSIONS, Geometry

FORMAT = "reftok-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20


def _is_int(value: Any) -> bool:
    return type(value) is int


def _int_list(value: Any, low: int, lengths: range) -> bool:
    return isinstance(value, list) and len(value) in lengths and all(_is_int(v) and v >= low for v in value)


# What each key of the manifest's model section (RefTokConfig.to_dict()) must hold. Kept here, not taken from
# RefTokConfig, so this module stays torch-free; tests/test_export_metadata.py checks the two agree.
MODEL_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model_version": ("an integer", _is_int),
    "channels": ("a list of 3 positive integers", lambda v: _int_list(v, 1, range(3, 4))),
    "res_blocks": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "fsq_levels": ("a list of 1 to 16 integers >= 2", lambda v: _int_list(v, 2, range(1, 17))),
    "temporal_factor": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "block_frames": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "reference": ("true or false", lambda v: isinstance(v, bool)),
    "motion_channels": ("a positive integer", lambda v: _is_int(v) and v >= 1),
    "group_context": ("true or false", lambda v: isinstance(v, bool)),
    "aligned_reference": ("true or false", lambda v: isinstance(v, bool)),
    "motion_search": ("true or false", lambda v: isinstance(v, bool)),
    "block_refinement": ("true or false", lambda v: isinstance(v, bool)),
}
# absent from exports made before they existed
OPTIONAL_MODEL_FIELDS = ("group_context", "aligned_reference", "motion_search", "block_refinement")


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that shape an artefact (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("reftok-deploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    path = folder / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, default=float) + "\n").encode())
    return path


def read_manifest(folder: str | Path, verify_files: bool = True) -> dict[str, Any]:
    """Parse and check an export folder's manifest -> dict; every problem is one ReftokError line."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ReftokError(f"export folder not found: {folder}")
    if not path.is_file():
        raise ReftokError(f"{folder} has no {MANIFEST}: not a reftok-export folder (run reftok-export first)")
    manifest = read_json_object(path, MAX_MANIFEST_BYTES, FORMAT, "reftok-export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ReftokError(f"{path} has manifest format {manifest.get('format_version')!r}; expected {FORMAT_VERSION}")
    version = manifest.get("model", {}).get("model_version") if isinstance(manifest.get("model"), dict) else None
    if version not in MODEL_VERSIONS:
        raise ReftokError(f"{folder} was exported from model version {version!r}; this reftok-deploy runs versions "
                          f"{', '.join(map(str, MODEL_VERSIONS))}")
    check_model_section(path, manifest["model"])
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not all(isinstance(e, dict) for e in artifacts.values()):
        raise ReftokError(f"{path} lists no artifacts")
    if not isinstance(manifest.get("precisions", []), list) or not isinstance(manifest.get("tensorrt") or {}, dict):
        raise ReftokError(f"{path}: 'precisions' must be a list and 'tensorrt' an object")
    if verify_files:
        for key, entry in artifacts.items():
            file = folder / str(entry.get("file", ""))
            if not file.is_file() or file.parent.resolve() != folder.resolve():
                raise ReftokError(f"{folder}: artifact {key} ({entry.get('file')}) is missing")
            if sha256_file(file) != entry.get("sha256"):
                raise ReftokError(f"{file} does not match its sha256 in {MANIFEST}: modified or corrupt")
    return manifest


_ABSENT = object()  # a key one side has and the other has not


def _shown(value: Any) -> str:
    """A manifest or metadata value on one line, compact: ``[8,5,5,5]``, ``true``, ``"abc"``."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def check_model_section(path: Path, model: dict[str, Any]) -> None:
    """Refuse a manifest model section with a missing key or a value of the wrong type (one line)."""
    for key, (what, valid) in MODEL_FIELDS.items():
        if key not in model:
            if key not in OPTIONAL_MODEL_FIELDS:
                raise ReftokError(f"{path}: model has no {key}: the manifest was edited; re-export")
        elif not valid(model[key]):
            raise ReftokError(f"{path}: model {key} must be {what}, got {_shown(model[key])}")


def artifact_key(graph: str, precision: str) -> str:
    """The manifest's key of one graph at one precision (``encoder.fp32``): the key of its ONNX artefact,
    its pre-flight report, its TensorRT engine and its model version. Built here only."""
    return f"{graph}.{precision}"


def split_artifact_key(key: str) -> tuple[str, str]:
    """``encoder.fp32`` -> ``("encoder", "fp32")`` (the inverse of :func:`artifact_key`)."""
    graph, _, precision = key.partition(".")
    return graph, precision


@dataclass(frozen=True)
class ExportFolder:
    """An export folder opened once (:func:`open_export`): its manifest parsed and checked, every
    artefact hashed against it. Runners, parity, bench and reftok-run take this object; nothing
    reads or hashes the folder a second time. Treat ``manifest`` as read-only."""

    path: Path
    manifest: dict[str, Any]
    geometry: Geometry
    checkpoint_sha256: str
    onnx_versions: dict[str, int | None]  # model version each ONNX artefact records, by manifest key

    @property
    def precisions(self) -> list[str]:
        return list(self.manifest.get("precisions", []))

    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint folder the export was made from, as recorded (None where it records none)."""
        path = (self.manifest.get("checkpoint") or {}).get("path")
        return path if isinstance(path, str) else None

    @property
    def manifest_sha256(self) -> str:
        """sha256 of the manifest as it was opened (what a measurement cached beside it is valid for)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True, default=float).encode()).hexdigest()

    def artifact(self, graph: str, precision: str) -> Path | None:
        """Path of ``{graph}.{precision}`` ONNX, or None when the export has none."""
        entry = self.manifest["artifacts"].get(artifact_key(graph, precision))
        return None if entry is None else self.path / entry["file"]

    def onnx_version(self, graph: str, precision: str) -> int | None:
        """The model version the ``{graph}.{precision}`` ONNX records (read when the folder was opened)."""
        return self.onnx_versions.get(artifact_key(graph, precision))

    def engines(self) -> dict[str, dict]:
        """TensorRT engine entries by ``{graph}.{precision}`` (empty where none were built)."""
        engines = (self.manifest.get("tensorrt") or {}).get("engines") or {}
        return engines if isinstance(engines, dict) else {}

    def engine(self, graph: str, precision: str) -> Any:
        """The manifest's TensorRT engine entry of ``{graph}.{precision}`` as written (None where none)."""
        return self.engines().get(artifact_key(graph, precision))


def open_export(folder: str | Path) -> ExportFolder:
    """Read, check and hash an export folder once -> :class:`ExportFolder` (one-line errors)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    checkpoint = manifest.get("checkpoint")
    sha = checkpoint.get("weights_sha256") if isinstance(checkpoint, dict) else None
    if not isinstance(sha, str):
        raise ReftokError(f"{folder / MANIFEST} records no checkpoint weights_sha256")
    listed = {e.get("file") for e in manifest["artifacts"].values()}
    versions: dict[str, int | None] = {}
    for key, entry in manifest["artifacts"].items():
        if entry.get("format") != "onnx":
            continue
        facts = onnx_facts(folder / entry["file"])
        versions[key] = facts["model_version"]
        if (facts["graph"], facts["precision"]) not in ((None, None), (entry.get("graph"), entry.get("precision"))):
            raise ReftokError(f"{folder}: {entry['file']} is listed as {key} but records itself as "
                              f"{facts['graph']}.{facts['precision']}")
        check_graph_claims(folder / MANIFEST, manifest, entry["file"], facts)
        # weights outside the file would escape the hashes above: only what the manifest hashed may be read
        unlisted = [name for name in facts["external"] if name not in listed]
        if unlisted:
            raise ReftokError(f"{folder}: {entry['file']} reads external data {unlisted[0]!r} that {MANIFEST} does not "
                              "hash: re-export")
    return ExportFolder(folder, manifest, Geometry.from_config(manifest["model"]), sha, versions)


def _claims(manifest: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, manifest's value, graph's value) for everything a graph records about its model. A graph
    from an older export may lack some of it; what it lacks is not compared (accepted as it was before)."""
    claims: list[tuple[str, Any, Any]] = []
    model = manifest["model"]
    if facts["model_version"] is not None:
        claims.append(("model version", model.get("model_version"), facts["model_version"]))
    if facts["model"] is not None:
        # keys added since version 2 shipped read as their default (False), as export.pipeline's merge does:
        # graphs kept from an export made before them sit beside a manifest that has them
        defaults = {key: False for key in OPTIONAL_MODEL_FIELDS}
        model, recorded = {**defaults, **model}, {**defaults, **facts["model"]}
        for key in sorted(set(model) | set(recorded)):
            claims.append((key, model.get(key, _ABSENT), recorded.get(key, _ABSENT)))
    if facts["checkpoint_sha256"] is not None:
        checkpoint = manifest.get("checkpoint") or {}
        claims.append(("checkpoint weights_sha256", checkpoint.get("weights_sha256"), facts["checkpoint_sha256"]))
    return claims


def check_graph_claims(manifest_path: Path, manifest: dict[str, Any], file: str, facts: dict[str, Any]) -> None:
    """Refuse a manifest that says other than graph ``file`` does about the model it was exported from."""
    for field, claimed, recorded in _claims(manifest, facts):
        # type() too: JSON's true equals 1 in Python, and 8.0 equals 8
        if claimed != recorded or type(claimed) is not type(recorded):
            raise ReftokError(f"{manifest_path} says {_phrase(field, claimed)} but {file} was exported with "
                              f"{_phrase(field, recorded)}: the manifest was edited; re-export")


def _phrase(field: str, value: Any) -> str:
    return f"no {field}" if value is _ABSENT else f"{field} {_shown(value)}"


def onnx_facts(path: str | Path) -> dict[str, Any]:
    """What an ONNX file says of itself, read without its weights: ``model_version``, ``graph``,
    ``precision``, ``model`` (its model config, as the manifest's ``model``) and ``checkpoint_sha256``
    (from reftok-export's metadata; None where absent), ``external`` (the external-data files its
    initializers point to)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ReftokError(f"cannot parse ONNX {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    version = props.get("reftok.model_version")
    export = _json_prop(props, "reftok.export") or {}
    sha = export.get("checkpoint_sha256")
    external = sorted({entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
                       if entry.key == "location"})
    return {"model_version": int(version) if version is not None and version.isdigit() else None,
            "graph": export.get("graph"), "precision": export.get("precision"),
            "model": _json_prop(props, "reftok.model_config"),
            "checkpoint_sha256": sha if isinstance(sha, str) else None, "external": external}


def _json_prop(props: dict[str, str], key: str) -> dict[str, Any] | None:
    """A metadata prop holding a JSON object -> dict (None where absent or not an object)."""
    try:
        value = json.loads(props[key])
    except (KeyError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None

