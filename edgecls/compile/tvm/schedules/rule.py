"""What every schedule rule is: an object whose `apply(func, target)` returns the scheduled
function's schedule and stats key, or None when the rule does not apply (in the spirit of TVM's
dlight rules). The ordered table of rules is schedules.RULES."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgecls.compile.tvm.core import load_tvm
from edgecls.errors import first_line

log = logging.getLogger(__name__)

# Below this many loop iterations a parallel launch (a few microseconds) costs more than it saves.
PARALLEL_MIN_WORK = 1 << 14


class NotRecognised(Exception):
    """The rule does not apply to this function; try the next rule or leave the function alone."""


@dataclass(frozen=True)
class RuleTarget:
    """What the rules know of the target: its fp32 SIMD lanes (isa.simd_lanes) and the
    tvm.target.Target, whose features pick the int8 intrinsics."""
    lanes: int
    target: object


@dataclass(frozen=True)
class Applied:
    """A rule's result: the traced schedule (what the tuning database stores as a kernel's
    zero-trial record) and the stats key it counts under ("conv2d", "depthwise", "generic"...)."""
    sch: object
    kind: str


class Rule:
    """A schedule rule. Subclasses implement `schedule(sch, target)`: transform `sch` and return
    the stats key, or raise NotRecognised where the function is not theirs."""

    name = "rule"

    def apply(self, func, target: RuleTarget) -> Applied | None:
        """The rule on a fresh schedule of `func`, or None when it does not apply: it raised
        NotRecognised, or a schedule primitive refused a step. The half-transformed schedule is
        dropped; `func` is untouched. The catch is broad on purpose: TVM 0.27 (tvm_ffi) raises
        its errors as builtin exceptions (ScheduleError is a RuntimeError, other C++ checks
        come back as ValueError, TypeError, IndexError...), so no narrower class tells "a
        primitive refused" from the rest."""
        load_tvm()
        from tvm import s_tir
        sch = s_tir.Schedule(func)
        try:
            return Applied(sch, self.schedule(sch, target))
        except Exception as exc:  # noqa: BLE001  (see the docstring)
            log.debug("schedule rule %s failed: %s", self.name, first_line(exc))
            return None

    def schedule(self, sch, target: RuleTarget) -> str:
        raise NotImplementedError
