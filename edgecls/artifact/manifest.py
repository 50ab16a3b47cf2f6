"""manifest.json: what an artifact is and everything that made it.

Schema (version 1), top-level keys:
  schema, kind ("edgecls-artifact"), created, edgecls_version
  model      {source, format, sha256, input{name,shape,dtype}, output{...}, notes, name, origin_sha256}
             name: the stem of the file the user gave (before optimize); origin_sha256: its sha256
  target     the Target as data, plus `tvm_resolved` (the concrete TVM target dict used)
  layout     {requested, chosen, reason}
  preprocess {size, mean, std, channel_order, layout, resize}
  labels     [class names] or null
  options    the command-line options that shaped the build, and where the input shape and the
             preprocessing came from (input_shape_from, preprocess_from)
  passes     [{name, seconds, detail}]    graph passes in order
  stats      {ops_before, convs, batch_norm_in_graph, batch_norm_left, kernels, ...}
  stages     [{stage, top1, top5, n, params, macs, size_bytes, ...}]  every top-1 on the same n
             validation images; the compiled stage adds `carried` {n, top1}: the batch boards use
  variant, optimized_from   the row label (--variant, else read from the graph), and the model optimized
  graph      {macs, macs_unknown_nodes, params, quantization{precision, how, weights, activations,
             format}, variant}   counted from the compiled ONNX graph (compile/graph_facts.py)
  runner     {file, arch, glibc_required, tvm_runtime}
  versions   {edgecls, python, apache-tvm, apache-tvm-ffi, torch, onnx, onnxruntime, onnxsim, compiler}
  batches, runtimes_shipped, backend   {"1": "model.so", ...}, ["tvm", ...], {runtime, how}
  timings    {load_s, passes_s, build_s, total_s}
  verification {how, max_abs_diff, top1_match, top5_match, ...}
  acceptance {accepted, max_accuracy_drop, n, drop_points, ci95_points, lost, gained, decided,
             conclusive, reason}   the --max-accuracy-drop gate (artifact/gate.py)
  files      {relative path: {sha256, size}}  every file except manifest.json itself
`edgecls compile` builds it as a Manifest (artifact/builder.py); readers get the JSON as a dict.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from edgecls.hashing import sha256_file as file_sha256
from edgecls import __version__
from edgecls.errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"



def library_versions(extra: dict | None = None) -> dict:
    out = {"edgecls": __version__, "python": platform.python_version()}
    for pkg in ("apache-tvm", "apache-tvm-ffi", "torch", "onnx", "onnxruntime", "onnxsim", "numpy",
                "torchao", "torch-pruning", "litert-torch", "ai-edge-litert"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out.update(extra or {})
    return out


def file_table(root: Path) -> dict:
    """sha256 and size of every file under root except the manifest, with posix relative paths."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        table[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    return table


def new_manifest(**sections) -> dict:
    manifest = {
        "schema": SCHEMA_VERSION,
        "kind": "edgecls-artifact",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecls_version": __version__,
    }
    manifest.update(sections)
    return manifest


@dataclass
class ModelSection:
    """The input model as loaded: `source` is its path, `sha256` its bytes."""
    source: str
    format: str
    sha256: str
    input: dict  # {name, shape, dtype}
    output: dict
    notes: list
    name: str | None = None  # reports name the model by it (absent in older manifests)
    origin_sha256: str | None = None  # of the file given; `sha256` is of the optimized one


@dataclass
class OptionsSection:
    """The command-line options that shaped the build."""
    layout: str
    input_shape: list[int] | None
    import_route: str
    verify: bool
    schedules: bool
    integer_kernels: bool
    variant: str | None = None  # --variant: the user's label for the row, over the detected one
    preprocess_from: str | None = None  # options, a file saved with the model, or the ImageNet defaults
    input_shape_from: str | None = None  # where the input's channels and size were read


@dataclass
class RunnerSection:
    file: str
    arch: str
    glibc_required: str | None
    tvm_runtime: str  # where the TVM runtime libraries came from


@dataclass
class Manifest:
    """manifest.json as built by `edgecls compile`; to_dict() is the schema above, keys in this order.

    Sections whose shape varies with the build (target, layout, stats, stages, verification,
    acceptance ...) stay dicts: other code reads them by key, and older artifacts carry them as is.
    """
    model: ModelSection
    target: dict  # Target.to_dict() + tvm_resolved
    layout: dict  # {requested, chosen, reason}
    preprocess: dict
    labels: list[str] | None
    options: OptionsSection
    passes: list[dict]
    stats: dict
    stages: list[dict]
    variant: str
    optimized_from: str | None
    runner: RunnerSection
    versions: dict
    batches: dict  # {"1": "model.so", "4": "model_b4.so", ...}
    runtimes_shipped: list[str]
    backend: dict
    timings: dict
    verification: dict | None = None  # set once the artifact has been run
    acceptance: dict | None = None
    graph: dict | None = None  # graph facts; older manifests lack them
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA_VERSION, "kind": "edgecls-artifact", "created": self.created,
               "edgecls_version": __version__}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "created" or (name in ("verification", "acceptance", "graph") and value is None):
                continue
            out[name] = asdict(value) if hasattr(value, "__dataclass_fields__") else value
        return out


def write_manifest(root: Path, manifest: dict | Manifest) -> Path:
    """manifest.json with the file table of everything else under root (so: write it last)."""
    manifest = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    manifest["files"] = file_table(root)
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / MANIFEST
    if not root.exists():
        raise ArtifactError(f"artifact {root} does not exist")
    if not path.is_file():
        raise ArtifactError(f"{root} is not an edgecls artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("kind") != "edgecls-artifact":
        raise ArtifactError(f"{path} is not an edgecls artifact manifest")
    if manifest.get("schema", 0) > SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema {manifest.get('schema')}; this edgecls reads up to "
                            f"{SCHEMA_VERSION}: upgrade edgecls")
    return manifest


def manifest_id(root: str | Path) -> str:
    """The artifact's identity: sha256 of its manifest file (which pins every file's hash)."""
    return file_sha256(Path(root) / MANIFEST)


def verify_files(root: str | Path, manifest: dict | None = None) -> list[str]:
    """Problems found comparing files on disk with the manifest (empty list: intact)."""
    root = Path(root)
    manifest = manifest or read_manifest(root)
    problems = []
    for rel, info in manifest.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != info["size"] or file_sha256(path) != info["sha256"]:
            problems.append(f"{rel}: checksum mismatch")
    return problems


def require_intact(root: str | Path) -> dict:
    manifest = read_manifest(root)
    problems = verify_files(root, manifest)
    if problems:
        raise ArtifactError(f"artifact {root} fails its checksums: {'; '.join(problems[:3])}")
    return manifest
