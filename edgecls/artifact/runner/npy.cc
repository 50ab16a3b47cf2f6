// See npy.h.
#include "npy.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

namespace edgecls {

namespace ffi = tvm::ffi;

namespace {

// The dtypes we accept, as numpy "descr" codes (little-endian, or byte-order free for 1 byte).
const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"int8", "|i1", {kDLInt, 8, 1}},       {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"int16", "<i2", {kDLInt, 16, 1}},     {"uint16", "<u2", {kDLUInt, 16, 1}},
    {"int32", "<i4", {kDLInt, 32, 1}},     {"int64", "<i8", {kDLInt, 64, 1}},
};

// TVM kernels may assume 64-byte aligned buffers (TVM's own kAllocAlignment), so allocate so.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, std::max<size_t>(64, (n + 63) / 64 * 64));
    if (!t->data) throw Fail("out of memory allocating input tensor");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// Value of `key` in the npy header dict, e.g. "'<f4'" or "(1, 3, 64, 64)".
std::string HeaderField(const std::string& h, const std::string& key) {
  size_t p = h.find("'" + key + "'");
  if (p == std::string::npos) throw Fail("bad npy header: no '" + key + "'");
  p = h.find(':', p);
  if (p == std::string::npos) throw Fail("bad npy header near '" + key + "'");
  ++p;
  while (p < h.size() && h[p] == ' ') ++p;
  size_t e = (p < h.size() && h[p] == '(') ? h.find(')', p) + 1 : h.find(',', p);
  if (e == std::string::npos || e == 0) throw Fail("bad npy header near '" + key + "'");
  return h.substr(p, e - p);
}

const char* Bytes(const ffi::Tensor& t) {
  return static_cast<const char*>(t.data_ptr()) + t.byte_offset();
}

}  // namespace

// Version 1.0 .npy: magic(6)+version(2)+len(2)+header, padded with spaces to 64 bytes, ending '\n'.
void WriteNpyBytes(const std::string& path, const std::string& descr, const std::string& shape, const char* data,
                   size_t size) {
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) throw Fail("cannot write output '" + path + "'");
  uint16_t hl = static_cast<uint16_t>(h.size());
  const char pre[10] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0, char(hl & 0xff), char(hl >> 8)};
  f.write(pre, 10);
  f.write(h.data(), h.size());
  f.write(data, size);
  if (!f) throw Fail("error writing output '" + path + "'");
}

const DType& DTypeFromDescr(std::string d) {
  // '=' (native) is little-endian on every board we target; 1-byte types may use any marker.
  if (!d.empty() && d[0] == '=') d[0] = '<';
  if (d.size() == 3 && d[2] == '1' && (d[0] == '<' || d[0] == '>')) d[0] = '|';
  for (const DType& t : kDTypes)
    if (d == t.descr) return t;
  throw Fail("unsupported npy dtype '" + d +
             "' (supported: float32, float64, int8, uint8, int16, uint16, int32, int64, "
             "little-endian)");
}

const DType& DTypeFromDL(DLDataType dl) {
  for (const DType& t : kDTypes)
    if (t.dl.code == dl.code && t.dl.bits == dl.bits && dl.lanes == 1) return t;
  throw Fail("model output has an unsupported dtype (code " + std::to_string(dl.code) + ", bits " +
             std::to_string(dl.bits) + ", lanes " + std::to_string(dl.lanes) + ")");
}

NpyFile::NpyFile(const std::string& p) : path(p), f(p, std::ios::binary) {
  if (!f) throw Fail("cannot open input '" + path + "'");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Fail("'" + path + "' is not a .npy file");
  unsigned char b[4] = {0, 0, 0, 0};
  if (magic[6] == 1) {
    f.read(reinterpret_cast<char*>(b), 2);
  } else if (magic[6] == 2 || magic[6] == 3) {
    f.read(reinterpret_cast<char*>(b), 4);
  } else {
    throw Fail("unsupported npy version " + std::to_string(int(magic[6])) + " in '" + path + "'");
  }
  uint32_t hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24);
  if (!f || hlen > (1u << 20)) throw Fail("bad npy header in '" + path + "'");
  std::string h(hlen, '\0');
  if (!f.read(&h[0], hlen)) throw Fail("truncated npy header in '" + path + "'");

  std::string descr = HeaderField(h, "descr");
  if (descr.size() < 2 || descr.front() != '\'' || descr.back() != '\'')
    throw Fail("unsupported npy dtype " + descr);
  dt = &DTypeFromDescr(descr.substr(1, descr.size() - 2));
  if (HeaderField(h, "fortran_order").rfind("False", 0) != 0)
    throw Fail("'" + path + "' is in Fortran order; save it C-contiguous (np.ascontiguousarray)");
  std::string s = HeaderField(h, "shape");
  for (size_t i = 1; i < s.size();) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      size_t used = 0;
      shape.push_back(std::stoll(s.substr(i), &used));
      i += used;
    } else {
      ++i;
    }
  }
}

ffi::Tensor NpyFile::Read(std::vector<int64_t> shp) {
  if (shp.empty()) shp = shape;
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shp.data(), shp.size()),
                                           dt->dl, DLDevice{kDLCPU, 0});
  ReadInto(t);
  return t;
}

void NpyFile::ReadInto(const ffi::Tensor& t) {
  size_t n = ffi::GetDataSize(t);
  if (n && !f.read(static_cast<char*>(t.data_ptr()), n))
    throw Fail("'" + path + "' is truncated: expected " + std::to_string(n) + " more data bytes");
}


ffi::Tensor ReadNpy(const std::string& path) { return NpyFile(path).Read(); }

std::string ShapeStr(ffi::ShapeView s, const char* open, const char* close, bool py_tuple) {
  std::string r = open;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  if (py_tuple && s.size() == 1) r += ",";
  return r + close;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  if (!t.IsContiguous()) throw Fail("model output is not contiguous");
  WriteNpyBytes(path, DTypeFromDL(t.dtype()).descr, ShapeStr(t.shape(), "(", ")", true), Bytes(t),
                ffi::GetDataSize(t));
}

double ElementAsDouble(const ffi::Tensor& t, int64_t i) {
  const char* p = Bytes(t);
  DLDataType d = t.dtype();
  if (d.code == kDLFloat && d.bits == 32) return reinterpret_cast<const float*>(p)[i];
  if (d.code == kDLFloat && d.bits == 64) return reinterpret_cast<const double*>(p)[i];
  if (d.code == kDLInt && d.bits == 8) return reinterpret_cast<const int8_t*>(p)[i];
  if (d.code == kDLUInt && d.bits == 8) return reinterpret_cast<const uint8_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 16) return reinterpret_cast<const int16_t*>(p)[i];
  if (d.code == kDLUInt && d.bits == 16) return reinterpret_cast<const uint16_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 32) return reinterpret_cast<const int32_t*>(p)[i];
  if (d.code == kDLInt && d.bits == 64) return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
  throw Fail("cannot read scores of this output dtype");
}

}  // namespace edgecls
