"""Runs inside the aarch64 guest Python (arm_peers.py): load one model in one runtime with one
thread, run it N times on a fixed input of the model's size, print the output's shape and top class.

    python3.11 arm_peer_runner.py {litert|onnxruntime|ncnn} MODEL N

Counted as a whole process; (count of 3 - count of 1) / 2 cancels loading and the first run.
Only numpy and the runtime are imported: the guest has nothing else. ncnn's MODEL is the .param
file with its .bin beside it; its input and output blob names are read from the .param.
"""

import sys

import numpy as np


def image(size: int) -> np.ndarray:
    """The fixed input: seeded, NCHW, at the model's own size (MobileViT-XS takes 256)."""
    return np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)


def litert(path: str):
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=path, num_threads=1)  # XNNPACK is applied by default
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = tuple(int(d) for d in inp["shape"])
    x = image(shape[2] if shape[1] == 3 else shape[1])
    if shape != x.shape:
        x = x.transpose(0, 2, 3, 1)  # NHWC model
    if np.issubdtype(inp["dtype"], np.integer):  # full int8: quantize the input once, outside the runs
        s, z = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / s + z), info.min, info.max)
    x = np.ascontiguousarray(x.astype(inp["dtype"]))

    def run():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(outp["index"])
    return run


def onnxruntime(path: str):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name, x = sess.get_inputs()[0].name, image(int(sess.get_inputs()[0].shape[2]))
    return lambda: sess.run(None, {name: x})[0]


def ncnn(path: str):
    import ncnn as nc
    net = nc.Net()
    net.opt.num_threads = 1
    net.opt.use_vulkan_compute = False
    if net.load_param(path) != 0 or net.load_model(path[:-len(".param")] + ".bin") != 0:
        raise SystemExit(f"ncnn cannot load {path}")
    layers = [ln.split() for ln in open(path).read().splitlines()[2:]]
    inp = next(ln[4 + int(ln[2])] for ln in layers if ln[0] == "Input")
    outp = layers[-1][4 + int(layers[-1][2]) + int(layers[-1][3]) - 1]
    mat = nc.Mat(np.ascontiguousarray(image(224)[0]))  # ncnn_files converts at 224

    def run():
        with net.create_extractor() as ex:
            ex.input(inp, mat)
            return np.array(ex.extract(outp)[1])[None]
    return run


def main() -> None:
    runtime, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = {"litert": litert, "onnxruntime": onnxruntime, "ncnn": ncnn}[runtime](path)
    for _ in range(n):
        out = run()
    print(f"shape={tuple(out.shape)} top1={int(np.argmax(out))}")


if __name__ == "__main__":
    main()
