"""MetaSchedule tuning: the per-target database and its replay (database.py), the tuning loop
(tuner.py), its search space and cost model (search.py), and where candidates are measured
(measure.py): in this process, on a board's TVM RPC server over SSH (rpc_server.py), or on a
fleet of boards behind TVM's RPC tracker (tracker.py)."""

from edgecls.compile.tvm.tuning.database import apply_database, open_database, target_key
from edgecls.compile.tvm.tuning.rpc_server import RpcSpec
from edgecls.compile.tvm.tuning.tuner import TaskResult, TuneResult, tune

__all__ = ["RpcSpec", "TaskResult", "TuneResult", "apply_database", "open_database", "target_key", "tune"]
