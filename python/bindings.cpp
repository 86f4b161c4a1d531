// dve_kernels._C: the CPU implementations of the dve_kernels custom ops.
//
// The CPU implementations of the four ops whose schemas dve_kernels/_library.py defines (the Triton launchers
// are their CUDA implementations):
//   exchange_fwd(query, aux, scale) -> (out, lse)
//   exchange_bwd(grad_out, query, aux, out, lse, scale) -> (grad_query, grad_aux)
//   warp_loss_fwd(src, tgt, src_xy, tgt_xy, pow, scale) -> (rows, lse)
//   warp_loss_bwd(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale) -> (grad_src, grad_tgt)
// Features (B, N, C) / (B, M, C) are float32, float64, bfloat16 or float16; coordinates (B, ., 2), rows
// and grad_rows are float64 for float64 features and float32 otherwise. lse (B, N) is float64 for every
// dtype: a float32 lse of logits ~400 is only 3e-5 exact, and that error would scale every probability
// of its row in the backward (csrc/common.h, split_lse); saving 4 more bytes per row avoids it. The schemas, fake
// (meta) kernels and autograd formulas are registered from Python, in dve_kernels/_library.py.
//
// This file checks the tensors (TORCH_CHECK: the public API validated them already, so a failure here
// is a bug in a caller), allocates the outputs and calls the kernel table of the best instruction
// set of this CPU (python/kernel_table.h).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "kernel_table.h"

namespace dve_bind {
namespace {

bool cpu_supports(const std::string& isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "generic";
}

const KernelTable* table_named(const std::string& isa) {
  if (isa == "avx512") return kernels_avx512();
  if (isa == "avx2") return kernels_avx2();
  if (isa == "generic") return kernels_generic();
  return nullptr;
}

// The kernels for this process: DVE_KERNELS_ISA=generic|avx2|avx512 forces one (an error if this CPU or
// build cannot run it), otherwise the widest one this CPU supports.
std::string select_error;
const KernelTable* select_kernels() {
  const char* forced = std::getenv("DVE_KERNELS_ISA");
  if (forced && *forced) {
    const std::string isa(forced);
    const KernelTable* table = table_named(isa);
    if (!table || !cpu_supports(isa)) {
      select_error = "DVE_KERNELS_ISA=" + isa +
                     ": expected one of generic, avx2, avx512 that this CPU supports and this build contains";
      return nullptr;
    }
    return table;
  }
  for (const char* isa : {"avx512", "avx2"})
    if (table_named(isa) && cpu_supports(isa)) return table_named(isa);
  return kernels_generic();
}

const KernelTable* kernels() {
  static const KernelTable* table = select_kernels();
  TORCH_CHECK(table != nullptr, "dve_kernels._C: ", select_error);
  return table;
}

Storage storage_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return Storage::f32;
    case at::kDouble: return Storage::f64;
    case at::kBFloat16: return Storage::bf16;
    case at::kHalf: return Storage::f16;
    default:
      TORCH_CHECK(false, "dve_kernels: ", name, " must be float32, float64, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

// float64 for float64 features, float32 otherwise (coordinates, rows, grad_rows): the rule of
// dve_kernels/precision.py, accumulate_dtype.
at::ScalarType side_dtype(const at::Tensor& features) {
  return features.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "dve_kernels: ", name, " must be a CPU tensor, got ", t.device());
}

void check_features(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.dim() == 3, "dve_kernels: ", name, " must be (B, rows, C), got ", t.dim(), " dims ", t.sizes());
  storage_of(t, name);
}

void check_same(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "dve_kernels: ", name, " must have the dtype of ", like_name,
              " (", like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), "dve_kernels: ", name, " must have the shape of ", like_name, " ",
              like.sizes(), ", got ", t.sizes());
}

void check_side(const at::Tensor& t, at::ScalarType dtype, at::IntArrayRef shape, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == dtype, "dve_kernels: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "dve_kernels: ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Shapes (B, N, C) and (B, M, C) with matching B and C; M >= 1 (a softmax over nothing is undefined).
void check_pair(const at::Tensor& x, const at::Tensor& y, const char* x_name, const char* y_name) {
  check_features(x, x_name);
  check_features(y, y_name);
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "dve_kernels: ", x_name, " and ", y_name,
              " must have one dtype, got ", x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(x.size(0) == y.size(0) && x.size(2) == y.size(2), "dve_kernels: ", x_name, " ", x.sizes(), " and ",
              y_name, " ", y.sizes(), " must agree in batch and channels");
  TORCH_CHECK(y.size(1) > 0 || x.size(1) == 0 || x.size(0) == 0, "dve_kernels: ", y_name,
              " must have at least one row, got ", y.sizes());
}

int threads() { return at::get_num_threads(); }

std::tuple<at::Tensor, at::Tensor> exchange_fwd_cpu(const at::Tensor& query_in, const at::Tensor& aux_in,
                                                    double scale) {
  check_pair(query_in, aux_in, "query", "aux");
  const at::Tensor query = query_in.contiguous(), aux = aux_in.contiguous();
  const int64_t batch = query.size(0), n = query.size(1), m = aux.size(1), channels = query.size(2);
  at::Tensor out = at::empty(query.sizes(), query.options());  // packed, whatever the input strides
  at::Tensor lse = at::empty({batch, n}, query.options().dtype(at::kDouble));
  if (out.numel() > 0 || (batch > 0 && n > 0 && channels == 0)) {
    if (channels == 0) {
      lse.fill_(std::log(static_cast<double>(m)));
    } else {
      kernels()->exchange_forward(storage_of(query, "query"), query.data_ptr(), aux.data_ptr(), out.data_ptr(),
                                  lse.data_ptr(), batch, n, m, channels, scale, threads());
    }
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> exchange_bwd_cpu(const at::Tensor& grad_out_in, const at::Tensor& query_in,
                                                    const at::Tensor& aux_in, const at::Tensor& out_in,
                                                    const at::Tensor& lse_in, double scale) {
  check_pair(query_in, aux_in, "query", "aux");
  check_same(grad_out_in, query_in, "grad_out", "query");
  check_same(out_in, query_in, "out", "query");
  check_side(lse_in, at::kDouble, {query_in.size(0), query_in.size(1)}, "lse");
  const at::Tensor grad_out = grad_out_in.contiguous(), query = query_in.contiguous(), aux = aux_in.contiguous(),
                   out = out_in.contiguous(), lse = lse_in.contiguous();
  const int64_t batch = query.size(0), n = query.size(1), m = aux.size(1), channels = query.size(2);
  at::Tensor grad_query = at::empty(query.sizes(), query.options());  // packed, whatever the input strides
  at::Tensor grad_aux = at::empty(aux.sizes(), aux.options());  // packed, whatever the input strides
  if (n == 0 || batch == 0 || channels == 0) {
    grad_query.zero_();
    grad_aux.zero_();
  } else {
    kernels()->exchange_backward(storage_of(query, "query"), grad_out.data_ptr(), query.data_ptr(), aux.data_ptr(),
                                 out.data_ptr(), lse.data_ptr(), grad_query.data_ptr(), grad_aux.data_ptr(), batch, n,
                                 m, channels, scale, threads());
  }
  return {grad_query, grad_aux};
}

void check_coordinates(const at::Tensor& src, const at::Tensor& tgt, const at::Tensor& src_xy,
                       const at::Tensor& tgt_xy) {
  const auto dtype = side_dtype(src);
  check_side(src_xy, dtype, {src.size(0), src.size(1), 2}, "src_xy");
  check_side(tgt_xy, dtype, {tgt.size(0), tgt.size(1), 2}, "tgt_xy");
}

std::tuple<at::Tensor, at::Tensor> warp_loss_fwd_cpu(const at::Tensor& src_in, const at::Tensor& tgt_in,
                                                     const at::Tensor& src_xy_in, const at::Tensor& tgt_xy_in,
                                                     double pow, double scale) {
  check_pair(src_in, tgt_in, "src", "tgt");
  check_coordinates(src_in, tgt_in, src_xy_in, tgt_xy_in);
  const at::Tensor src = src_in.contiguous(), tgt = tgt_in.contiguous(), src_xy = src_xy_in.contiguous(),
                   tgt_xy = tgt_xy_in.contiguous();
  const int64_t batch = src.size(0), n = src.size(1), m = tgt.size(1), channels = src.size(2);
  const auto options = src.options().dtype(side_dtype(src));
  at::Tensor rows = at::empty({batch, n}, options);
  at::Tensor lse = at::empty({batch, n}, src.options().dtype(at::kDouble));
  if (rows.numel() > 0) {
    kernels()->warp_loss_forward(storage_of(src, "src"), src.data_ptr(), tgt.data_ptr(), src_xy.data_ptr(),
                                 tgt_xy.data_ptr(), rows.data_ptr(), lse.data_ptr(), batch, n, m, channels, pow, scale,
                                 threads());
  }
  return {rows, lse};
}

std::tuple<at::Tensor, at::Tensor> warp_loss_bwd_cpu(const at::Tensor& grad_rows_in, const at::Tensor& src_in,
                                                     const at::Tensor& tgt_in, const at::Tensor& src_xy_in,
                                                     const at::Tensor& tgt_xy_in, const at::Tensor& rows_in,
                                                     const at::Tensor& lse_in, double pow, double scale) {
  check_pair(src_in, tgt_in, "src", "tgt");
  check_coordinates(src_in, tgt_in, src_xy_in, tgt_xy_in);
  const auto dtype = side_dtype(src_in);
  const std::vector<int64_t> row_shape{src_in.size(0), src_in.size(1)};
  check_side(grad_rows_in, dtype, row_shape, "grad_rows");
  check_side(rows_in, dtype, row_shape, "rows");
  check_side(lse_in, at::kDouble, row_shape, "lse");
  const at::Tensor grad_rows = grad_rows_in.contiguous(), src = src_in.contiguous(), tgt = tgt_in.contiguous(),
                   src_xy = src_xy_in.contiguous(), tgt_xy = tgt_xy_in.contiguous(), rows = rows_in.contiguous(),
                   lse = lse_in.contiguous();
  const int64_t batch = src.size(0), n = src.size(1), m = tgt.size(1), channels = src.size(2);
  at::Tensor grad_src = at::empty(src.sizes(), src.options());  // packed, whatever the input strides
  at::Tensor grad_tgt = at::empty(tgt.sizes(), tgt.options());  // packed, whatever the input strides
  if (n == 0 || batch == 0 || channels == 0) {
    grad_src.zero_();
    grad_tgt.zero_();
  } else {
    kernels()->warp_loss_backward(storage_of(src, "src"), grad_rows.data_ptr(), src.data_ptr(), tgt.data_ptr(),
                                  src_xy.data_ptr(), tgt_xy.data_ptr(), rows.data_ptr(), lse.data_ptr(),
                                  grad_src.data_ptr(), grad_tgt.data_ptr(), batch, n, m, channels, pow, scale,
                                  threads());
  }
  return {grad_src, grad_tgt};
}

}  // namespace
}  // namespace dve_bind

// The schemas are defined once, in Python (dve_kernels/_library.py), for every backend; this file only
// registers the CPU implementations.
TORCH_LIBRARY_IMPL(dve_kernels, CPU, m) {
  m.impl("exchange_fwd", &dve_bind::exchange_fwd_cpu);
  m.impl("exchange_bwd", &dve_bind::exchange_bwd_cpu);
  m.impl("warp_loss_fwd", &dve_bind::warp_loss_fwd_cpu);
  m.impl("warp_loss_bwd", &dve_bind::warp_loss_bwd_cpu);
}

// fma_peak(threads, iterations) -> float32 FLOP/s of `threads` threads running independent FMA chains at
// once, with the vector width of the kernels' instruction set (csrc/peak.h): the roofline's ceiling.
static PyObject* fma_peak(PyObject*, PyObject* args) {
  int threads = 1;
  long iterations = 100000000;
  if (!PyArg_ParseTuple(args, "|il", &threads, &iterations)) return nullptr;
  if (threads < 1 || iterations < 1) {
    PyErr_SetString(PyExc_ValueError, "fma_peak: threads and iterations must be >= 1");
    return nullptr;
  }
  const dve_bind::KernelTable* table = dve_bind::kernels();
  std::vector<double> rates(static_cast<std::size_t>(threads));
  Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) rates[static_cast<std::size_t>(t)] = table->fma_flops_per_second(iterations);
  Py_END_ALLOW_THREADS
  double total = 0.0;
  for (double rate : rates) total += rate;
  return PyFloat_FromDouble(total);
}

static PyMethodDef dve_methods[] = {
    {"fma_peak", fma_peak, METH_VARARGS,
     "fma_peak(threads=1, iterations=100000000) -> float32 FLOP/s of independent FMA chains on `threads` threads"},
    {nullptr, nullptr, 0, nullptr}};

// Importing the module runs the registrations above. It records which instruction set the kernels use, or
// fails the import if DVE_KERNELS_ISA names one that cannot run.
static PyModuleDef dve_module = {PyModuleDef_HEAD_INIT, "_C", "dve_kernels CPU kernels (the CPU implementations of torch.ops.dve_kernels.*)",
                                 -1, dve_methods};

PyMODINIT_FUNC PyInit__C(void) {
  const dve_bind::KernelTable* table = dve_bind::select_kernels();
  if (table == nullptr) {
    PyErr_SetString(PyExc_ImportError, ("dve_kernels._C: " + dve_bind::select_error).c_str());
    return nullptr;
  }
  PyObject* module = PyModule_Create(&dve_module);
  if (module != nullptr) PyModule_AddStringConstant(module, "kernel_isa", table->isa);
  return module;
}
