"""A Triton Inference Server model repository from an export folder: one model per graph, precision and backend.

``REPO/<model>/config.pbtxt`` and ``REPO/<model>/1/<file>`` for each exported graph (encoder, decoder) at each
precision the export holds, on each backend asked for:

- ``onnxruntime``: ``platform: "onnxruntime_onnx"``, ``1/model.onnx``, GPU instances.
- ``openvino``: ``backend: "openvino"`` with ``default_model_filename: "model.onnx"`` (the backend reads ONNX
  with ``ov::Core::read_model``; its default file is ``model.xml``), CPU instances. With ``max_batch_size`` > 0
  the backend fixes the model's batch to ``max_batch_size`` (``ov::set_batch``) and refuses smaller batches
  unless ``ENABLE_BATCH_PADDING`` is ``YES``, which every config here sets. INT8 is left out: the Q/DQ graph
  is rewritten for OpenVINO at load time by the project's runner (runtimes/openvino_graphs.py), which Triton
  does not do.
- ``tensorrt``: ``platform: "tensorrt_plan"``, ``1/model.plan``, GPU instances, only where the manifest lists
  an engine; ``max_batch_size`` is capped to the batch of the engine's profile.

The models are stateless: the reference frame is an input of every request. The files are copied (the
repository travels without the export), each atomically, into a staging folder that replaces ``repo`` only
once every config has been checked against its graph. A marker file (:data:`MARKER`) records what was written,
so a repository this module wrote may be written again; any other non-empty folder is refused.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.base.files import AtomicFile, atomic_write_bytes, publish_folder, sha256_file
from reftok_deploy.base.manifest import ExportFolder, artifact_key, onnx_facts, open_export
from reftok_deploy.base.spec import GRAPH_NAMES, INPUTS, OUTPUTS, Geometry, fixed_dims

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
MARKER = ".reftok-triton-repo.json"
MARKER_FORMAT = "reftok-triton-repo"
MODEL_FILES = {"onnxruntime": "model.onnx", "openvino": "model.onnx", "tensorrt": "model.plan"}
KINDS = {"onnxruntime": "KIND_GPU", "openvino": "KIND_CPU", "tensorrt": "KIND_GPU"}
TRITON_TYPES = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16", np.dtype(np.int32): "TYPE_INT32",
                np.dtype(np.int64): "TYPE_INT64", np.dtype(np.uint8): "TYPE_UINT8", np.dtype(np.int8): "TYPE_INT8"}
# ONNX TensorProto element types -> Triton's (FLOAT, UINT8, INT8, INT32, INT64, FLOAT16)
ONNX_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16"}
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TRITONCLIENT_HINT = "pip install 'tritonclient[grpc]'"


@dataclass(frozen=True)
class Tensor:
    """One input or output as a Triton config declares it: the batch dim left out, -1 for a variable dim."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonModel:
    """What one model's config.pbtxt says, in a form both the writer and the checker use."""

    name: str
    backend: str  # onnxruntime | openvino | tensorrt
    graph: str
    precision: str
    max_batch_size: int
    queue_delay_us: int
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    instances: int = 1

    @property
    def file(self) -> str:
        return MODEL_FILES[self.backend]


def model_name(prefix: str, graph: str, precision: str, backend: str) -> str:
    """``reftok_encoder_fp32_onnxruntime``: letters, digits and underscores only (a valid Triton model name)."""
    return f"{prefix}_{graph}_{precision}_{backend}"


def spec_tensors(graph: str, geometry: Geometry) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(inputs, outputs) of ``graph`` from the I/O spec: the batch dim dropped, symbolic dims -1, the block
    length and group count fixed from ``geometry``."""
    def tensors(specs) -> tuple[Tensor, ...]:
        out = []
        for spec in specs:
            dims = fixed_dims(spec, geometry)
            assert dims[0] == "batch", spec  # the spec's contract: batch first
            out.append(Tensor(spec.name, TRITON_TYPES[np.dtype(spec.dtype)],
                              tuple(d if isinstance(d, int) else -1 for d in dims[1:])))
        return tuple(out)

    return tensors(INPUTS[graph]), tensors(OUTPUTS[graph])


def render_config(model: TritonModel) -> str:
    """The plain config.pbtxt text of ``model`` (protobuf text format of ``inference.ModelConfig``)."""
    lines = [f'name: "{model.name}"']
    if model.backend == "openvino":
        lines.append('backend: "openvino"')
    else:
        lines.append('platform: "{}"'.format("onnxruntime_onnx" if model.backend == "onnxruntime" else "tensorrt_plan"))
    lines += [f"max_batch_size: {model.max_batch_size}", f'default_model_filename: "{model.file}"']

    def block(key: str, tensors: tuple[Tensor, ...]) -> None:
        lines.append(f"{key} [")
        for k, t in enumerate(tensors):
            lines.extend(["  {", f'    name: "{t.name}"', f"    data_type: {t.data_type}",
                          f"    dims: [ {', '.join(map(str, t.dims))} ]", "  }" + ("," if k + 1 < len(tensors) else "")])
        lines.append("]")

    block("input", model.inputs)
    block("output", model.outputs)
    lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {model.queue_delay_us}", "}",
              "instance_group [", "  {", f"    count: {model.instances}", f"    kind: {KINDS[model.backend]}", "  }", "]"]
    if model.backend == "openvino":
        # the backend fixes the batch to max_batch_size (ov::set_batch); smaller batches are padded, not refused
        lines += ["parameters [", "  {", '    key: "ENABLE_BATCH_PADDING"', '    value: { string_value: "YES" }', "  }",
                  "]"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- writing

def write_triton_repository(export: ExportFolder | str | Path, repo: str | Path,
                            backends: Iterable[str] = BACKENDS, precisions: Iterable[str] | None = None,
                            max_batch_size: int = 4, queue_delay_us: int = 2000, instances: int = 1,
                            prefix: str = "reftok") -> list[Path]:
    """Write a Triton model repository at ``repo`` from ``export`` (an opened :class:`ExportFolder` or its path)
    -> the model folders written (``repo/<model>``), sorted.

    One model per graph x precision (all the export holds, or ``precisions``) x backend; ``tensorrt`` only
    where the manifest lists an engine, ``openvino`` not for INT8. Every config is checked against its ONNX
    graph (names, types, ranks, fixed dims) before ``repo`` is replaced, and parsed with tritonclient's
    protobuf where tritonclient is installed. ``repo`` must be absent, empty, or a repository this function
    wrote (it is then replaced whole); it may not lie inside the export folder, nor hold it. One-line
    ReftokError for every refusal; nothing is left behind on failure.
    """
    folder = export if isinstance(export, ExportFolder) else open_export(export)
    repo = Path(repo)
    backends = tuple(dict.fromkeys(backends))
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ReftokError(f"unknown Triton backend {unknown[0] if unknown else '(none)'!r}: use {', '.join(BACKENDS)}")
    if type(max_batch_size) is not int or max_batch_size < 1:
        raise ReftokError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    if type(queue_delay_us) is not int or queue_delay_us < 0:
        raise ReftokError(f"queue_delay_us must be an integer >= 0, got {queue_delay_us!r}")
    if type(instances) is not int or instances < 1:
        raise ReftokError(f"instances must be a positive integer, got {instances!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
        raise ReftokError(f"model name prefix {prefix!r} may hold only letters, digits and underscores")
    chosen = folder.precisions if precisions is None else list(dict.fromkeys(precisions))
    missing = [p for p in chosen if p not in folder.precisions]
    if missing:
        raise ReftokError(f"{folder.path} has no {missing[0]} graphs (it holds {', '.join(folder.precisions) or 'none'})")
    check_triton_target(folder.path, repo)

    plan = _plan(folder, backends, chosen, max_batch_size, queue_delay_us, instances, prefix)
    if not plan:
        raise ReftokError(f"nothing to write: {folder.path} holds no graph for backends {', '.join(backends)}")
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repo.parent, prefix=f".{repo.name}.staging-"))
    try:
        marker_models = {}
        for model, sources in plan:
            version = staging / model.name / "1"
            for source, name in sources:
                _copy(source, version / name)
            atomic_write_bytes(staging / model.name / "config.pbtxt", render_config(model).encode())
            marker_models[model.name] = {"graph": model.graph, "precision": model.precision, "backend": model.backend,
                                         "file": model.file, "sha256": sha256_file(version / model.file)}
        atomic_write_bytes(staging / "README.md", _readme(folder, repo, [m for m, _ in plan], backends).encode())
        geometry = {"block_frames": folder.geometry.block_frames, "temporal_factor": folder.geometry.temporal_factor}
        atomic_write_bytes(staging / MARKER, (json.dumps(
            {"format": MARKER_FORMAT, "format_version": 1, "export": str(folder.path.resolve()),
             "checkpoint_sha256": folder.checkpoint_sha256, "geometry": geometry, "models": marker_models},
            indent=2) + "\n").encode())
        problems = check_triton_repository(staging, require_tritonclient=False)
        if problems:
            raise ReftokError(f"Triton repository for {folder.path} failed its check: {problems[0]}")
        _publish(staging, repo)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(repo / m.name for m, _ in plan)


def _plan(folder: ExportFolder, backends: tuple[str, ...], precisions: list[str], max_batch_size: int,
          queue_delay_us: int, instances: int, prefix: str) -> list[tuple[TritonModel, list[tuple[Path, str]]]]:
    """(model, [(source file, name in version folder 1)]) for every model to write."""
    plan = []
    for backend in backends:
        for precision in precisions:
            if backend == "openvino" and precision == "int8":
                continue  # see the module docstring: Triton would run the Q/DQ graph unrewritten
            for graph in GRAPH_NAMES:
                onnx_file = folder.artifact(graph, precision)
                if onnx_file is None:
                    continue
                inputs, outputs = spec_tensors(graph, folder.geometry)
                batch = max_batch_size
                if backend == "tensorrt":
                    engine = folder.engine(graph, precision)
                    if engine is None:
                        continue
                    source, batch = _engine_file(folder, graph, precision, engine, max_batch_size)
                    sources = [(source, MODEL_FILES[backend])]
                else:
                    # weights stored beside the graph travel with it, under the names the graph reads
                    sources = [(onnx_file, MODEL_FILES[backend])]
                    sources += [(folder.path / name, name) for name in onnx_facts(onnx_file)["external"]]
                model = TritonModel(model_name(prefix, graph, precision, backend), backend, graph, precision, batch,
                                    queue_delay_us, inputs, outputs, instances)
                plan.append((model, sources))
    return plan


def _engine_file(folder: ExportFolder, graph: str, precision: str, engine: Any, max_batch_size: int) -> tuple[Path, int]:
    """(engine file, the model's max_batch_size: ``max_batch_size`` capped to the engine profile's max batch)."""
    key = artifact_key(graph, precision)
    if not isinstance(engine, dict) or not isinstance(engine.get("file"), str):
        raise ReftokError(f"{folder.path}: the manifest's TensorRT engine {key} has no file")
    path = folder.path / engine["file"]
    if not path.is_file() or path.resolve().parent != folder.path.resolve():
        raise ReftokError(f"{folder.path}: TensorRT engine {key} ({engine['file']}) is missing")
    if sha256_file(path) != engine.get("sha256"):
        raise ReftokError(f"{path} does not match its sha256 in the manifest: modified or corrupt")
    profile_max = ((engine.get("key") or {}).get("profile") or {}).get("max")
    if isinstance(profile_max, list) and profile_max and type(profile_max[0]) is int and profile_max[0] >= 1:
        max_batch_size = min(max_batch_size, profile_max[0])
    return path, max_batch_size


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` whole or not at all (a real copy: the repository must travel)."""
    with AtomicFile(target) as out, out.open() as dst, open(source, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_triton_target(export: Path, repo: Path) -> None:
    """Refuse a repo inside the export folder, one holding it, a file, or a non-empty folder this module did
    not write."""
    export_r, repo_r = export.resolve(), repo.resolve()
    if _inside(repo_r, export_r):
        raise ReftokError(f"Triton repository {repo} lies inside the export folder {export}: choose a folder outside it")
    if _inside(export_r, repo_r):
        raise ReftokError(f"Triton repository {repo} holds the export folder {export}: choose another folder")
    if repo.is_symlink() or (repo.exists() and not repo.is_dir()):
        raise ReftokError(f"Triton repository {repo} exists and is not a folder")
    if repo.is_dir() and any(repo.iterdir()) and not _is_ours(repo):
        raise ReftokError(f"Triton repository {repo} is a non-empty folder not written by reftok: "
                          "choose an empty or new folder")


def _is_ours(repo: Path) -> bool:
    try:
        marker = json.loads((repo / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT


def _publish(staging: Path, repo: Path) -> None:
    """Move the checked staging folder to ``repo``; a previous repository of ours is replaced whole."""
    try:
        publish_folder(staging, repo)
    except OSError as exc:
        raise ReftokError(f"cannot write {repo}: {exc.strerror or exc}; nothing was written there") from None


# --------------------------------------------------------------------------------------------------- checking

def _parse_config(path: Path):
    """config.pbtxt -> tritonclient's ``ModelConfig`` message (ImportError without tritonclient[grpc])."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _from_proto(config, backend: str, graph: str, precision: str) -> TritonModel:
    from tritonclient.grpc import model_config_pb2

    type_name = model_config_pb2.DataType.Name

    def tensors(items) -> tuple[Tensor, ...]:
        return tuple(Tensor(t.name, type_name(t.data_type), tuple(int(d) for d in t.dims)) for t in items)

    delay = config.dynamic_batching.max_queue_delay_microseconds if config.HasField("dynamic_batching") else -1
    return TritonModel(config.name, backend, graph, precision, config.max_batch_size, delay,
                       tensors(config.input), tensors(config.output), sum(g.count for g in config.instance_group) or 1)


def _backend_of(config) -> str | None:
    if config.backend == "openvino":
        return "openvino"
    return {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}.get(config.platform)


def graph_tensors(path: str | Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], list[str]]:
    """(inputs, outputs, problems) of an ONNX graph read without its weights, as Triton would declare them
    for a batching model: the first dim dropped (a problem unless it is symbolic), symbolic dims -1."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    problems: list[str] = []
    initializers = {t.name for t in proto.graph.initializer}

    def tensors(values) -> tuple[Tensor, ...]:
        out = []
        for value in values:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            if not dims or dims[0] != -1:
                problems.append(f"{Path(path).name}: {value.name} has no variable batch dim (shape {dims})")
            out.append(Tensor(value.name, ONNX_TYPES.get(tensor_type.elem_type, f"ONNX_TYPE_{tensor_type.elem_type}"),
                              tuple(dims[1:])))
        return tuple(out)

    return tensors(proto.graph.input), tensors(proto.graph.output), problems


def compare_io(model: TritonModel, inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...], what: str) -> list[str]:
    """Problems of ``model``'s declared I/O against ``inputs``/``outputs`` (of a graph or of the spec):
    the same names, data types and ranks, and every fixed dim of ``what`` declared as it is (as Triton's
    backends compare them: a variable dim there accepts any; a -1 in the config where ``what`` is fixed is
    refused)."""
    problems = []
    for kind, declared, actual in (("input", model.inputs, inputs), ("output", model.outputs, outputs)):
        names, expected = [t.name for t in declared], {t.name: t for t in actual}
        if sorted(names) != sorted(expected) or len(set(names)) != len(names):
            problems.append(f"{model.name}: {kind}s {names} but {what} has {sorted(expected)}")
            continue
        for tensor in declared:
            other = expected[tensor.name]
            if tensor.data_type != other.data_type:
                problems.append(f"{model.name}: {kind} {tensor.name} is {tensor.data_type} but {other.data_type} "
                                f"in {what}")
            elif len(tensor.dims) != len(other.dims) or any(
                    want != -1 and have != want for have, want in zip(tensor.dims, other.dims)):
                problems.append(f"{model.name}: {kind} {tensor.name} has dims {list(tensor.dims)} but "
                                f"{list(other.dims)} in {what} (batch dim left out, -1 variable)")
    return problems


def check_triton_repository(repo: str | Path, require_tritonclient: bool = True) -> list[str]:
    """Problems of a Triton repository written by :func:`write_triton_repository` (empty list: sound).

    Every ``<model>/config.pbtxt`` is parsed with ``google.protobuf.text_format`` into tritonclient's
    ``ModelConfig`` and held to: its folder name, a known platform/backend, ``max_batch_size`` > 0, dynamic
    batching on, ``1/<default_model_filename>`` present and of the sha256 recorded in the marker, its I/O
    against the I/O spec (names, TYPE_*, dims from the recorded geometry) and, for ONNX models, against the
    graph itself (read without weights). Raises a one-line ReftokError when ``repo`` is not such a repository,
    and when tritonclient is missing (``require_tritonclient=False``: then checks only what it can without it,
    the configs as this module renders them).
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise ReftokError(f"Triton repository not found: {repo}")
    try:
        marker = json.loads((repo / MARKER).read_text(encoding="utf-8"))
        geometry = Geometry.from_config(marker["geometry"])
        models = marker["models"]
        assert marker.get("format") == MARKER_FORMAT and isinstance(models, dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError, AssertionError):
        raise ReftokError(f"{repo} is not a Triton repository written by reftok (no valid {MARKER})") from None
    try:
        importlib.import_module("google.protobuf.text_format")
        importlib.import_module("tritonclient.grpc.model_config_pb2")
        have_client = True
    except ImportError:
        if require_tritonclient:
            raise ReftokError(f"checking a Triton repository needs tritonclient: {TRITONCLIENT_HINT}") from None
        have_client = False

    problems: list[str] = []
    folders = sorted(p.name for p in repo.iterdir() if p.is_dir())
    for name in sorted(set(folders) - set(models)):
        problems.append(f"{name}: a model folder the marker does not list")
    for name, entry in sorted(models.items()):
        if not isinstance(entry, dict) or not NAME.match(str(name)):
            problems.append(f"{name}: bad marker entry")
            continue
        problems += _check_model(repo / name, entry, geometry, have_client)
    return problems


def _check_model(folder: Path, entry: dict, geometry: Geometry, have_client: bool) -> list[str]:
    name, graph, precision, backend = folder.name, entry.get("graph"), entry.get("precision"), entry.get("backend")
    if graph not in GRAPH_NAMES or backend not in BACKENDS:
        return [f"{name}: marker lists graph {graph!r} on backend {backend!r}"]
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        return [f"{name}: no config.pbtxt"]
    if have_client:
        try:
            config = _parse_config(config_path)
        except Exception as exc:  # noqa: BLE001 (text_format.ParseError and friends)
            return [f"{name}: config.pbtxt does not parse as a Triton ModelConfig: {str(exc).splitlines()[0]}"]
        declared_backend = _backend_of(config)
        model = _from_proto(config, backend, graph, precision)
        filename = config.default_model_filename or MODEL_FILES.get(declared_backend or "", "")
        kinds = {g.kind for g in config.instance_group}
        from tritonclient.grpc import model_config_pb2

        kind_names = {model_config_pb2.ModelInstanceGroup.Kind.Name(k) for k in kinds}
    else:
        # without tritonclient: the config as this module renders it must be byte for byte what is on disk
        inputs, outputs = spec_tensors(graph, geometry)
        text = config_path.read_text(encoding="utf-8")
        batch = re.search(r"^max_batch_size: (\d+)$", text, re.M)
        delay = re.search(r"max_queue_delay_microseconds: (\d+)", text)
        count = re.search(r"count: (\d+)", text)
        model = TritonModel(name, backend, graph, precision, int(batch.group(1)) if batch else 0,
                            int(delay.group(1)) if delay else -1, inputs, outputs, int(count.group(1)) if count else 1)
        if render_config(model) != text:
            return [f"{name}: config.pbtxt is not as written (install tritonclient to check an edited one: "
                    f"{TRITONCLIENT_HINT})"]
        declared_backend, filename, kind_names = backend, model.file, {KINDS[backend]}

    problems = []
    if model.name != name:
        problems.append(f"{name}: config.pbtxt names the model {model.name!r}, not its folder's name")
    if declared_backend != backend:
        problems.append(f"{name}: config.pbtxt runs on {declared_backend or 'an unknown platform'}, not {backend}")
    if model.max_batch_size < 1:
        problems.append(f"{name}: max_batch_size must be > 0 (the batch dim is left out of dims)")
    if model.queue_delay_us < 0:
        problems.append(f"{name}: dynamic batching is off")
    if kind_names != {KINDS[backend]}:
        problems.append(f"{name}: instance_group kind {sorted(kind_names)}; expected {KINDS[backend]}")
    if filename != MODEL_FILES[backend]:
        problems.append(f"{name}: default_model_filename {filename!r}; expected {MODEL_FILES[backend]!r}")
    model_file = folder / "1" / MODEL_FILES[backend]
    if not model_file.is_file() or model_file.is_symlink():
        return problems + [f"{name}: 1/{MODEL_FILES[backend]} is missing (or a link)"]
    if sha256_file(model_file) != entry.get("sha256"):
        problems.append(f"{name}: 1/{MODEL_FILES[backend]} does not match its sha256 in {MARKER}")
    spec_in, spec_out = spec_tensors(graph, geometry)
    problems += compare_io(model, spec_in, spec_out, f"the {graph} I/O spec")
    if backend != "tensorrt":
        try:
            graph_in, graph_out, graph_problems = graph_tensors(model_file)
        except Exception as exc:  # noqa: BLE001 (onnx's DecodeError and friends)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return problems + [f"{name}: 1/model.onnx does not parse as ONNX: {reason}"]
        problems += [f"{name}: {p}" for p in graph_problems]
        problems += compare_io(model, graph_in, graph_out, f"1/{MODEL_FILES[backend]}")
    return problems


# --------------------------------------------------------------------------------------------------- README

def _readme(folder: ExportFolder, repo: Path, models: list[TritonModel], backends: tuple[str, ...]) -> str:
    g = folder.geometry
    rows = []
    for m in models:
        what = "frames -> tokens" if m.graph == "encoder" else "tokens -> frames"
        rows.append(f"| `{m.name}` | {m.graph} ({what}) | {m.precision} | {m.backend} | {KINDS[m.backend]} "
                    f"| {m.max_batch_size} |")
    io_lines = []
    for graph in GRAPH_NAMES:
        ins, outs = spec_tensors(graph, g)
        fmt = lambda ts: ", ".join(f"`{t.name}` {t.data_type} [B, {', '.join(map(str, t.dims))}]" for t in ts)  # noqa: E731
        io_lines.append(f"- **{graph}**: inputs {fmt(ins)}; outputs {fmt(outs)}")
    skipped = []
    if "openvino" in backends and "int8" in folder.precisions:
        skipped.append("- OpenVINO INT8: not served. reftok's own OpenVINO runner rewrites the INT8 Q/DQ graph when "
                       "it loads it (OpenVINO misreads some Q/DQ placements); Triton's backend would run the file "
                       "as exported. Serve INT8 with ONNX Runtime or TensorRT.")
    if "tensorrt" in backends and not folder.engines():
        skipped.append("- TensorRT: the export lists no engines (built with `reftok-export` on a GPU box); "
                       "none written.")
    trt = [m for m in models if m.backend == "tensorrt"]
    trt_note = ""
    if trt:
        keys = {json.dumps({k: (folder.engine(m.graph, m.precision).get("key") or {}).get(k)
                            for k in ("tensorrt", "gpu")}) for m in trt}
        trt_note = ("\nThe TensorRT plans load only in a Triton whose TensorRT version matches the one that built them, "
                    f"on the same GPU model ({'; '.join(sorted(keys))}); their max_batch_size is capped to the batch "
                    "of the engine's optimisation profile.\n")
    encoder = next((m.name for m in models if m.graph == "encoder" and m.backend != "tensorrt"), None) \
        or next((m.name for m in models if m.graph == "encoder"), "reftok_encoder_fp32_onnxruntime")
    return f"""# RefTok on Triton Inference Server

Written by reftok-deploy from the export `{folder.path.resolve()}` (checkpoint weights sha256
`{folder.checkpoint_sha256[:16]}...`). Geometry: {g.block_frames} frames per block, {g.groups} token groups,
tokens of H/{g.spatial_factor} x W/{g.spatial_factor}; frames are RGB float32 in [-1, 1], channels first.

| model | graph | precision | backend | instances | max batch |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

I/O (B is the batch dim, left out of `dims` in each config; -1 is any size, H and W multiples of {g.spatial_factor}):

{chr(10).join(io_lines)}

The service is **stateless**: the reference frame is an input of both graphs, so the client sends its GOP's
reference frame with every request, and any instance can serve any request. To keep the reference
on the server instead, Triton's sequence batcher with implicit state (`sequence_batching {{ state [...] }}`)
is the option: the reference becomes a state tensor held per sequence ID. These configs do not do that.

Dynamic batching is on: requests of the same frame size are batched together (Triton batches only equal
shapes). The OpenVINO models run on the CPU with the batch fixed to max_batch_size (the backend calls
`ov::set_batch`); `ENABLE_BATCH_PADDING` pads smaller batches. On CPUs with AMX or AVX512-BF16 OpenVINO computes
FP32 graphs in bfloat16 by default (the backend offers no f32 hint), as reftok's `openvino:bf16` backend does
(held to the bf16 tolerance, not FP32's).
{trt_note}
{chr(10).join(skipped) + chr(10) if skipped else ''}
## Serve (on a box with Triton, not the machine that wrote this; the folder may be copied there whole)

```
tritonserver --model-repository {repo.resolve()}
# or: docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -v {repo.resolve()}:/models \\
#       nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository /models
```

`{MARKER}` records what reftok wrote here (reftok may rewrite this folder); Triton ignores it.

## Encode one block over HTTP (`pip install 'tritonclient[http]'`)

```python
import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("localhost:8000")
H, W = 256, 256
reference = np.zeros((1, 3, H, W), np.float32)        # the GOP's reference frame, RGB in [-1, 1]
frames = np.zeros((1, 3, {g.block_frames}, H, W), np.float32)     # the block to encode
inputs = [httpclient.InferInput("reference", list(reference.shape), "FP32"),
          httpclient.InferInput("frames", list(frames.shape), "FP32")]
inputs[0].set_data_from_numpy(reference)
inputs[1].set_data_from_numpy(frames)
result = client.infer("{encoder}", inputs, outputs=[httpclient.InferRequestedOutput("tokens")])
tokens = result.as_numpy("tokens")   # int32 [1, {g.groups}, H/{g.spatial_factor}, W/{g.spatial_factor}]
```
"""
