"""How tuner.tune builds and measures candidates: in this process, on a board, or on a fleet of
boards over RPC (measurer).

MetaSchedule's own LocalBuilder/LocalRunner run in popen workers; on
the 2-core dev machine each worker re-imports TVM (30-50 s when loaded), the builder starts new
workers for every batch, and the 30 s default timeout then fails every candidate with no
message. Builds happen here instead, and local measurements too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.tuning.rpc_server import rpc_server
from edgecls.compile.tvm.tuning.tracker import fleet

log = logging.getLogger(__name__)


def _ms():
    load_tvm()
    from tvm.s_tir import meta_schedule as ms
    return ms


def builder(compiler: str):
    tvm = load_tvm()
    ms = _ms()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support import cc

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        """Compile candidates here, one after the other (see the module docstring), and
        link a .so with the target's compiler: the RPC server on the board loads it as is."""

        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(bi.mod)
                    rt_mod = tvm.tirx.build(mod, target=bi.target)
                    path = os.path.join(tempfile.mkdtemp(prefix="edgecls-ms-"), "candidate.so")
                    rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as exc:  # noqa: BLE001  (a candidate that does not build)
                    results.append(ms.builder.BuilderResult(None, f"edgecls builder: {exc}"[:2000]))
            return results

    return _InProcessBuilder()


def local_runner(evaluator):
    tvm = load_tvm()
    ms = _ms()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.s_tir.meta_schedule.runner.utils import (
        alloc_argument_common,
        run_evaluator_common,
    )

    @derived_object
    class _InProcessRunner(ms.runner.PyRunner):
        """Measure in this process. ms.runner.LocalRunner's popen worker re-imports TVM (the
        same 30-50 s as the builder trap) and its timeout covers that start; a CPU candidate
        that MetaSchedule's postprocs accepted does not crash in practice."""

        def run(self, runner_inputs):
            fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
            futures = []
            for ri in runner_inputs:
                try:
                    dev = tvm.runtime.device(str(ri.device_type), 0)
                    rt_mod = tvm.runtime.load_module(str(ri.artifact_path))
                    args = alloc_argument_common(fill, dev, [a.as_json() for a in ri.args_info], 1)
                    futures.append(LocalRunnerFuture(run_evaluator_common(rt_mod, dev, evaluator, args), None))
                except Exception as exc:  # noqa: BLE001
                    futures.append(LocalRunnerFuture(None, f"edgecls runner: {exc}"[:2000]))
            return futures

    return _InProcessRunner()


def rpc_session(rpc_config):
    """RPCRunner's f_create_session for a server without a tracker: MetaSchedule's RPCConfig
    insists on tracker fields, so they carry the forwarded server's address instead."""
    from tvm import rpc
    return rpc.connect(rpc_config.tracker_host, int(rpc_config.tracker_port),
                       session_timeout=rpc_config.session_timeout_sec)


def measure_once(sch, target, builder, runner) -> list[float] | None:
    ms = _ms()
    args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        log.debug("zero-trial build failed: %s", built.error_msg)
        return None
    try:
        res = runner.run([ms.runner.RunnerInput(built.artifact_path, target.kind.name if
                                                target.kind.name != "llvm" else "cpu", args)])[0].result()
    finally:
        ms.utils.remove_build_dir(built.artifact_path)
    return [float(s) for s in res.run_secs] if res.run_secs else None


def rpc_alloc_argument(session, device, args_info, alloc_repeat):
    """RPCRunner's f_alloc_argument: random_fill_for_measure lives in libtvm_runtime_extra,
    which a runtime-only TVM (TVM_USE_RUNTIME_LIB=1) does not load; then send numpy data."""
    import numpy as np
    from tvm.runtime import tensor
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common
    try:
        fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    except Exception:  # noqa: BLE001
        fill = None
    if fill is not None:
        return alloc_argument_common(fill, device, args_info, alloc_repeat)
    rng = np.random.default_rng(0)
    return [[tensor(rng.uniform(-1, 1, size=[int(d) for d in shape]).astype(dtype), device=device)
             for _, dtype, shape in args_info] for _ in range(alloc_repeat)]


def _rpc_runner(evaluator, config, f_create_session, workers: int):
    ms = _ms()
    return ms.runner.RPCRunner(config, evaluator, f_create_session=f_create_session,
                               f_alloc_argument=rpc_alloc_argument, max_workers=workers)


def rpc_runner(evaluator, local_port: int, session_timeout_s: int):
    """MetaSchedule's RPCRunner on the one server forwarded to 127.0.0.1:local_port (rpc_session)."""
    config = _ms().runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=local_port,
                                    tracker_key="direct", session_timeout_sec=session_timeout_s)
    return _rpc_runner(evaluator, config, rpc_session, 1)


def tracker_runner(evaluator, tracker_port: int, key: str, session_timeout_s: int, workers: int):
    """MetaSchedule's RPCRunner on a fleet: its default session creation asks the tracker on
    127.0.0.1:tracker_port for a free server of `key`; one worker per board, so every board can
    measure at once (tracker.fleet starts and registers the servers)."""
    config = _ms().runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=tracker_port,
                                    tracker_key=key, session_timeout_sec=session_timeout_s)
    return _rpc_runner(evaluator, config, None, workers)


@contextlib.contextmanager
def measurer(runner, evaluator, key: str, info: dict):
    """Yield (builder, runner) for tuner.tune's `runner`: "local"; one RpcSpec (its server
    reached directly); or a list of RpcSpec, one per board of the target: a fleet behind TVM's
    RPC tracker, `key` naming the target there (a list of one is the direct path). Servers,
    forwards and the tracker stop when the context ends; `info` gets their pids, ports, sessions."""
    if isinstance(runner, str):
        yield builder("g++"), local_runner(evaluator)
        return
    specs = list(runner) if isinstance(runner, (list, tuple)) else [runner]
    first = specs[0]
    if len(specs) == 1:
        with rpc_server(first, info) as port:
            yield builder(first.compiler), rpc_runner(evaluator, port, first.session_timeout_s)
        return
    with fleet(specs, key, info) as port:
        yield builder(first.compiler), tracker_runner(evaluator, port, key, first.session_timeout_s, len(specs))
