"""The compile stage: Model + Target -> model.so, and the tuning that feeds it.

Layers, each importing only the ones below it (tests/test_compile_layers.py checks this):

    build.py, tune.py   policy: which layout, import route, runner, budget, what to record.
                        They import edgecls.compile.tvm (its public names), never its modules.
    graph_facts.py      MACs, parameters and the variant of the ONNX graph: onnx only, no TVM.
    tvm/                the one door to TVM (its __init__ lists the public names):
      lower.py            schedules + tuned records + weight packing -> executable / model.so
      tuning/             MetaSchedule: tuner -> measure -> rpc_server, tracker; database
      passes.py           graph passes -> quant/, schedules/isa (which 8-bit input the kernels take),
                          fast_math (the legalizations of softmax, sigmoid, GELU, Erf)
      frontend.py         ONNX / torch.export -> Relax
      fast_math.py        activations legalized with TOPI's fast_exp / fast_erf
      quant/              QDQ int8 rewrites of the Relax graph
      schedules/          the rule table (__init__) -> one rule per file -> rule.py, tir.py,
                          prepack.py, isa/ (feature queries, tensor intrinsics)
      core.py             load_tvm, versions, resolve_target: imports nothing of edgecls.compile

Within tvm/, a module imports a sibling's module directly (e.g. schedules.rule), never the names
of a package above it (edgecls.compile.tvm or its own package's __init__), so no import, at
module level or lazily inside a function, goes back up a layer.
"""

from edgecls.api_package import callable_as_api

callable_as_api(__name__)  # edgecls.compile(...) is edgecls.api.compile (edgecls/api_package.py)
