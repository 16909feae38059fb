// Schemas of the native ops (namespace fastadv_native; torch.ops.fastadv.* belongs to the Python
// custom ops of fastadv/ops/library.py, which call these as their native backend) and the Python
// module that makes `import fastadv._C` load this library.
//
// The ops take inputs already normalised by library.py: every row (sample) of x-like tensors is one
// dense block of D = numel / N elements, in the same layout for all tensors of one call; eps, alpha,
// scale are contiguous float32 [N]; noise is float32 in x's layout.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(fastadv_native, m) {
  m.def("linf_step_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "float clip_min, float clip_max) -> ()");
  m.def("l2_step_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "float clip_min, float clip_max) -> ()");
  m.def("start_from_noise(Tensor x_nat, Tensor r, Tensor scale, bool uniform, float clip_min, "
        "float clip_max) -> Tensor");
  m.def("early_stop_update_(Tensor logits, Tensor y, Tensor(a!) budget, Tensor(b!) kappa) -> Tensor");
  m.def("compaction_plan(Tensor leave) -> (Tensor, Tensor)");
  m.def("compact_rows(Tensor src, Tensor dest, Tensor? index, Tensor(a!)? out, Tensor(b!) packed) -> ()");
  m.def("linf_step_compact(Tensor x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "Tensor dest, Tensor index, Tensor(a!) out, Tensor(b!) x_next, Tensor(c!) x_nat_next, "
        "float clip_min, float clip_max) -> ()");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu"] = true;
#ifdef FASTADV_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["threads"] = at::get_num_threads();
#if defined(__AVX512F__)
  info["cpu_isa"] = "avx512";
#elif defined(__AVX2__)
  info["cpu_isa"] = "avx2";
#elif defined(__aarch64__)
  info["cpu_isa"] = "aarch64";
#else
  info["cpu_isa"] = "baseline";
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastadv native kernels: the ops are torch.ops.fastadv_native.*";
  m.def("build_info", &build_info, "What this build of the native library contains");
}
