// The kernel ops of the native library, torch.ops.fastadv._* (CPU kernels in cpu/ops_cpu.cpp, CUDA
// kernels in cuda/ops_cuda.cu), and the stub Python module that makes `import fastadv._C` load it.
//
// These are the private kernels behind the public ops torch.ops.fastadv.* (fastadv/ops/library.py),
// which validate every argument once, for every backend, and then call them. They take inputs
// already normalised there: every row (sample) of x-like tensors is one dense block of D = numel / N
// elements, in the same layout for all tensors of one call; eps, alpha, scale, noise and r are in the
// compute dtype (float64 for float64 tensors, else float32); `errors` is an int32 [1] flag.
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace {

// What this build holds, as "key=value" words: cuda, openmp, cpu_isa, cpu_clones.
std::string build_info() {
  std::string info;
#ifdef FASTADV_WITH_CUDA
  info += "cuda=1";
#else
  info += "cuda=0";
#endif
#ifdef _OPENMP
  info += " openmp=1";
#else
  info += " openmp=0";
#endif
#if defined(__AVX512F__)
  info += " cpu_isa=avx512";
#elif defined(__AVX2__)
  info += " cpu_isa=avx2";
#elif defined(__aarch64__)
  info += " cpu_isa=aarch64";
#else
  info += " cpu_isa=baseline";
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(FASTADV_NO_CLONES)
  info += " cpu_clones=x86-64-v3,x86-64-v4";  // the vector loops' AVX2 and AVX-512 versions (ops_cpu.cpp)
#else
  info += " cpu_clones=none";
#endif
  return info;
}

}  // namespace

// A fragment: the public ops of the same namespace are defined in Python (torch.library.custom_op).
TORCH_LIBRARY_FRAGMENT(fastadv, m) {
  m.def("_linf_step_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "float clip_min, float clip_max) -> ()");
  m.def("_l2_step_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "float clip_min, float clip_max) -> ()");
  m.def("_start_from_noise(Tensor x_nat, Tensor r, Tensor scale, bool uniform, float clip_min, "
        "float clip_max) -> Tensor");
  m.def("_early_stop_update_(Tensor logits, Tensor y, Tensor(a!) budget, Tensor(b!) kappa) -> Tensor");
  m.def("_compaction_plan(Tensor leave) -> (Tensor, Tensor)");
  m.def("_compact_rows(Tensor src, Tensor dest, Tensor? index, Tensor(a!)? leavers, Tensor(b!) packed, "
        "Tensor(c!) errors) -> ()");
  m.def("_linf_step_compact(Tensor x, Tensor grad, Tensor x_nat, Tensor eps, Tensor alpha, Tensor? noise, "
        "Tensor dest, Tensor index, Tensor(a!) leavers, Tensor(b!) x_next, Tensor(c!) x_nat_next, "
        "Tensor(d!) errors, float clip_min, float clip_max) -> ()");
  m.def("_linf_fosc_step_(Tensor(a!) x, Tensor grad, Tensor x_nat, Tensor x_start, Tensor eps, Tensor alpha, "
        "float threshold, bool always, float clip_min, float clip_max) -> Tensor");
  m.def("_build_info() -> str", &build_info);
}

// `import fastadv._C` loads this library (and so registers the ops); the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fastadv native kernels: torch.ops.fastadv._*",
                                      -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
