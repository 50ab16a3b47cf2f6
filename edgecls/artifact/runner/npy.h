// .npy files in and out of TVM tensors for edgecls-runner: the dtypes a classifier takes or
// gives (float32/64, int8/16/32/64, uint8/16; little-endian), C order, versions 1-3 read, 1.0
// written; input buffers 64-byte aligned, as TVM kernels may assume.
#pragma once

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgecls {

// A failure the runner reports as its one error line (exit status 2).
struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One accepted dtype: its numpy name, its npy "descr" code and its DLPack type.
struct DType {
  const char* name;
  const char* descr;
  DLDataType dl;
};
const DType& DTypeFromDescr(std::string d);
const DType& DTypeFromDL(DLDataType dl);

// An open .npy file, positioned at its data: ReadNpy reads it whole, --val-x one image at a time.
struct NpyFile {
  std::string path;
  std::ifstream f;
  const DType* dt = nullptr;
  std::vector<int64_t> shape;

  explicit NpyFile(const std::string& p);
  // A new tensor of `shape` (default: the file's) filled with the next bytes of the file.
  tvm::ffi::Tensor Read(std::vector<int64_t> shp = {});
  void ReadInto(const tvm::ffi::Tensor& t);
};

tvm::ffi::Tensor ReadNpy(const std::string& path);
void WriteNpy(const std::string& path, const tvm::ffi::Tensor& t);
// A version 1.0 .npy of `size` raw bytes with the given descr ("<i8") and shape ("(3,)").
void WriteNpyBytes(const std::string& path, const std::string& descr, const std::string& shape, const char* data,
                   size_t size);
// "(1, 3)" / "[1, 3]" style; py_tuple: a trailing comma for one dimension, as Python writes it.
std::string ShapeStr(tvm::ffi::ShapeView s, const char* open, const char* close, bool py_tuple);
// Element i of a contiguous tensor of any accepted dtype, as a double (for top-k scores).
double ElementAsDouble(const tvm::ffi::Tensor& t, int64_t i);

}  // namespace edgecls
