"""Optional MLflow logging (the `edgecls[mlflow]` extra), for `report --mlflow` and, later,
compile and bench. mlflow is imported only here and only when asked for; without it the user
gets one line saying what to install.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from edgecls.errors import EdgeclsError, UsageError

EXPERIMENT = "edgecls"


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise EdgeclsError("MLflow logging needs mlflow: pip install 'edgecls[mlflow]'") from None
    return mlflow


def require_mlflow() -> None:
    """Fail before any work when --mlflow was asked for and mlflow is not installed."""
    _mlflow()


def _clean_params(params: dict) -> dict[str, str]:
    # MLflow params are strings of at most 6000 characters; a missing value is simply not logged.
    return {str(k): str(v)[:6000] for k, v in (params or {}).items() if v is not None}


def _clean_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[str(k)] = float(v)
    return out


def log_run(uri: str, name: str, params: dict | None = None, metrics: dict | None = None,
            artifacts=(), experiment: str = EXPERIMENT, tags: dict | None = None) -> str:
    """Log one MLflow run to the tracking store at `uri` (file:///..., sqlite:///..., http://...).

    params: str-able values (None skipped); metrics: numbers (None, NaN and non-numbers skipped);
    artifacts: paths of files or folders to attach. Returns the run id.
    """
    if not uri:
        raise UsageError("--mlflow needs a tracking URI, e.g. file:///tmp/mlruns")
    mlflow = _mlflow()
    if "://" not in uri or uri.startswith("file:"):
        # MLflow 3.x refuses its file store unless opted in ("maintenance mode"); a file:// URI
        # given on purpose is that opt-in. A user's own setting of the variable wins.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    missing = [str(p) for p in artifacts if not Path(p).exists()]
    if missing:
        raise UsageError(f"MLflow artifact(s) not found: {', '.join(missing)}")
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=name, tags={"edgecls": "1", **(tags or {})})
        run_id = run.info.run_id
        try:
            from mlflow.entities import Metric, Param
            now = int(time.time() * 1000)
            client.log_batch(run_id,
                             metrics=[Metric(k, v, now, 0) for k, v in _clean_metrics(metrics).items()],
                             params=[Param(k, v) for k, v in _clean_params(params).items()])
            for p in map(Path, artifacts):
                if p.is_dir():
                    client.log_artifacts(run_id, str(p), artifact_path=p.name)
                else:
                    client.log_artifact(run_id, str(p))
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")
        return run_id
    except EdgeclsError:
        raise
    except Exception as exc:  # MLflow's own errors (bad URI, unreachable server): one line
        msg = " ".join(str(exc).split())[:300]
        raise EdgeclsError(f"MLflow logging to {uri} failed: {type(exc).__name__}: {msg}") from None


def log_compile(uri: str, artifact: Path) -> str:
    """`compile --mlflow URI`: one run per artifact, its manifest attached."""
    import json
    m = json.loads((Path(artifact) / "manifest.json").read_text())
    metrics = {"verify_max_abs_diff": (m.get("verification") or {}).get("max_abs_diff"),
               "size_bytes": sum(f["size"] for f in m.get("files", {}).values()),
               **{f"timing_{k}": v for k, v in (m.get("timings") or {}).items()}}
    for st in m.get("stages") or []:
        for key in ("top1", "top5", "n", "macs", "params", "size_bytes"):
            metrics[f"{st['stage']}_{key}"] = st.get(key)
    params = {"target": m["target"]["name"], "variant": m.get("variant"), "model_sha256": m["model"]["sha256"],
              "model": m["model"]["source"], "layout": (m.get("layout") or {}).get("chosen"),
              **{f"option_{k}": v for k, v in (m.get("options") or {}).items()}}
    return log_run(uri, f"compile {Path(artifact).name} {m['target']['name']}", params, metrics,
                   [Path(artifact) / "manifest.json"], tags={"edgecls.kind": "compile"})


def log_bench(uri: str, report_paths) -> list[str]:
    """`bench --mlflow URI`: one run per report (board x runtime x batch), the report attached."""
    import json
    runs = []
    for path in map(Path, report_paths):
        r = json.loads(path.read_text())
        t, bench = r.get("timings_ms") or {}, r.get("bench") or {}
        params = {"board": r["board"].get("name"), "runtime": r["runtime"], "batch": r.get("batch", 1),
                  "target": r["artifact"].get("target"), "variant": r["artifact"].get("variant"),
                  "threads": r.get("threads"), "artifact_id": r["artifact"].get("id")}
        metrics = {"median_ms": t.get("median"), "p90_ms": t.get("p90"), "p99_ms": t.get("p99"),
                   "fps": bench.get("images_per_s") or bench.get("fps"),
                   "top1": (r.get("accuracy") or {}).get("top1")}
        runs.append(log_run(uri, f"bench {params['board']} {params['runtime']}", params, metrics, [path],
                            tags={"edgecls.kind": "bench"}))
    return runs
