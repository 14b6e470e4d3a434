"""manifest.json of an export folder: what was written, from what, with which tools, and how it validated.

Reading a manifest checks its format, the model version, and every artefact's sha256,
so a runtime never runs a file it did not expect.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from reftok_deploy.files import atomic_write_bytes, read_json_object, sha256_file
from reftok_deploy.errors import ReftokError
from reftok_deploy.spec import MODEL_VERSION, Geometry

FORMAT = "reftok-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20


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
    if version != MODEL_VERSION:
        raise ReftokError(f"{folder} was exported from model version {version!r}; this reftok-deploy runs version {MODEL_VERSION}")
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

    def artifact(self, graph: str, precision: str) -> Path | None:
        """Path of ``{graph}.{precision}`` ONNX, or None when the export has none."""
        entry = self.manifest["artifacts"].get(f"{graph}.{precision}")
        return None if entry is None else self.path / entry["file"]

    def engines(self) -> dict[str, dict]:
        """TensorRT engine entries by ``{graph}.{precision}`` (empty where none were built)."""
        engines = (self.manifest.get("tensorrt") or {}).get("engines") or {}
        return engines if isinstance(engines, dict) else {}


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
        # weights outside the file would escape the hashes above: only what the manifest hashed may be read
        unlisted = [name for name in facts["external"] if name not in listed]
        if unlisted:
            raise ReftokError(f"{folder}: {entry['file']} reads external data {unlisted[0]!r} that {MANIFEST} does not "
                              "hash: re-export")
    return ExportFolder(folder, manifest, Geometry.from_config(manifest["model"]), sha, versions)


def onnx_facts(path: str | Path) -> dict[str, Any]:
    """What an ONNX file says of itself, read without its weights: ``model_version``, ``graph`` and
    ``precision`` (from reftok-export's metadata; None where absent), ``external`` (the external-data
    files its initializers point to)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ReftokError(f"cannot parse ONNX {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    version = props.get("reftok.model_version")
    try:
        export = json.loads(props.get("reftok.export", "{}"))
    except json.JSONDecodeError:
        export = {}
    if not isinstance(export, dict):
        export = {}
    external = sorted({entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
                       if entry.key == "location"})
    return {"model_version": int(version) if version is not None and version.isdigit() else None,
            "graph": export.get("graph"), "precision": export.get("precision"), "external": external}

