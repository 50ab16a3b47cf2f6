"""Every error a user can cause: one line on stderr, non-zero exit, no traceback, no output dir."""

from __future__ import annotations

import subprocess

import onnx
import pytest
from conftest import edgecls
from onnx import TensorProto, helper


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


@pytest.fixture()
def celu_model(tmp_path):
    # A valid model (checker and ONNX Runtime accept it) with an operator TVM cannot import.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Celu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_missing_model_file(tmp_path):
    p = edgecls("compile", tmp_path / "nope.onnx", "--target", "x86-host", "-o", tmp_path / "out")
    assert_one_line_error(p, "does not exist")
    assert not (tmp_path / "out").exists()


def test_truncated_onnx(demo, tmp_path):
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(demo.onnx.read_bytes()[: demo.onnx.stat().st_size // 2])
    p = edgecls("compile", bad, "--target", "x86-host", "-o", tmp_path / "out")
    assert_one_line_error(p, "not a valid ONNX model")
    assert not (tmp_path / "out").exists()


def test_text_file_renamed_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is a text file, not a model\n" * 20)
    p = edgecls("compile", bad, "--target", "x86-host", "-o", tmp_path / "out")
    assert_one_line_error(p, "not a valid ONNX model")


def test_unsupported_operator_is_named(celu_model, tmp_path):
    p = edgecls("compile", celu_model, "--target", "x86-host", "-o", tmp_path / "out")
    assert_one_line_error(p, "Celu")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_unknown_target_lists_known_ones(demo, tmp_path):
    p = edgecls("compile", demo.onnx, "--target", "rk9999", "-o", tmp_path / "out")
    assert_one_line_error(p, "unknown target 'rk9999'", "rk3399", "x86-host", "jetson-orin-nano")


def test_malformed_target_toml_names_the_key(demo, tmp_path):
    d = tmp_path / "targets"
    d.mkdir()
    (d / "myboard.toml").write_text('name = "myboard"\narch = "aarch64"\ntriple = "aarch64-linux-gnu"\n'
                                    '[toolchain]\ncompiler = "aarch64-linux-gnu-g++"\n')
    p = edgecls("targets", "--targets-dir", d)
    assert_one_line_error(p, "myboard.toml", "tvm.target")
    (d / "myboard.toml").write_text('name = "myboard"\narch = [\n')
    p = edgecls("targets", "show", "myboard", env={"EDGECLS_TARGETS": str(d)}, timeout=300)
    assert_one_line_error(p, "myboard.toml", "not valid TOML")


def test_missing_cross_compiler_names_the_debian_package(demo, tmp_path):
    d = tmp_path / "targets"
    d.mkdir()
    (d / "oddboard.toml").write_text(
        'name = "oddboard"\narch = "aarch64"\ntriple = "aarch64-linux-gnu"\n'
        '[tvm]\ntarget = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a53" }\n'
        '[toolchain]\ncompiler = "aarch64-none-elf-g++-missing"\ndebian_package = "g++-aarch64-linux-gnu"\n')
    p = edgecls("compile", demo.onnx, "--target", "oddboard", "-o", tmp_path / "out", "--targets-dir", d)
    assert_one_line_error(p, "aarch64-none-elf-g++-missing", "apt-get install g++-aarch64-linux-gnu")
    assert not (tmp_path / "out").exists()


def test_output_dir_exists(demo, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    p = edgecls("compile", demo.onnx, "--target", "x86-host", "-o", tmp_path / "out")
    assert_one_line_error(p, "already exists", "--force")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("shape,needle", [("1,3,32", "has 3 dimensions"), ("1,1,32,32", "pass --input-shape 1,3,32,32"),
                                          ("1,3,a,32", "comma-separated"), ("1,0,32,32", "positive")])
def test_wrong_input_shape(demo, tmp_path, shape, needle):
    p = edgecls("compile", demo.onnx, "--target", "x86-host", "-o", tmp_path / "out", "--input-shape", shape)
    assert_one_line_error(p, needle)


def test_not_an_artifact(tmp_path):
    p = edgecls("inspect", tmp_path)
    assert_one_line_error(p, "not an edgecls artifact")
    p = edgecls("run", tmp_path / "nothing")
    assert_one_line_error(p, "does not exist")


@pytest.fixture()
def tiny_fs(tmp_path):
    """A 3 MiB tmpfs: too small for an artifact. Needs root and mount rights; skipped otherwise."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_leaves_nothing_half_written(demo, tiny_fs):
    p = edgecls("compile", demo.onnx, "--target", "x86-host", "-o", tiny_fs / "out")
    assert_one_line_error(p, "no space left on device")
    assert list(tiny_fs.iterdir()) == []
