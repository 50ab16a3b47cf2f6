"""What MetaSchedule searches with in tuner.tune: the design space, the cost model, and a guard
that keeps TuneContext from loading every tensor intrinsic."""

from __future__ import annotations

import contextlib
import logging
import sys
import types

log = logging.getLogger(__name__)


def space(ms):
    # Explicit lists: "from-target" picks intrinsic rules for VNNI/AVX-512/ARM dotprod targets
    # (the 70 s tensor_intrin registration), and RewriteLayout is left out: it would change weight
    # layouts behind Relax's back.
    return ms.space_generator.PostOrderApply(
        sch_rules=ms.schedule_rule.ScheduleRule.create("llvm"),
        postprocs=[ms.postproc.DisallowDynamicLoop(), ms.postproc.RewriteParallelVectorizeUnroll(),
                   ms.postproc.RewriteReductionBlock()],
        mutator_probs=ms.mutator.Mutator.create("llvm"))


@contextlib.contextmanager
def no_tensor_intrin():
    """TuneContext.__init__ imports tvm.s_tir.tensor_intrin unconditionally: ~250 TVMScript
    functions, each parsed with inspect.stack(), whose cost grows with sys.modules: 70 s alone,
    180 s measured with torch loaded. No rule here uses an intrinsic, so a stub stands in for
    the length of the constructor (a real import elsewhere in the process is not affected)."""
    name = "tvm.s_tir.tensor_intrin"
    stub = name not in sys.modules
    if stub:
        sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        if stub:
            sys.modules.pop(name, None)


def cost_model(ms, cores: int):
    try:
        import xgboost  # noqa: F401
        return ms.cost_model.XGBModel(num_tuning_cores=cores, adaptive_training=True)
    except ImportError:  # tuning still works, the search is just blind
        log.warning("xgboost not installed: MetaSchedule searches with a random cost model")
        return ms.cost_model.RandomModel()
