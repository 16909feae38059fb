// ATen glue of the CUDA kernels: checks the arguments, launches the torch-free kernels of
// kernels.cu on the current stream, and registers them for the CUDA dispatch key.
// Built only when torch is a CUDA build (setup.py); defines nothing the CPU build needs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // the current stream (= at::cuda::getCurrentCUDAStream), without
                                  // ATen/cuda/CUDAContext.h's cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "kernels.cuh"

namespace fastadv {
namespace {

cuda::DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_clip(double clip_min, double clip_max) {
  TORCH_CHECK(!std::isnan(clip_min) && !std::isnan(clip_max), "clip_min, clip_max: must not be NaN");
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastadv_native::", op, ": CUDA error: ", cudaGetErrorString(err));
}

const float* noise_ptr(const c10::optional<at::Tensor>& noise) {
  return noise.has_value() ? noise->data_ptr<float>() : nullptr;
}

void linf_step_cuda(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                    const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min,
                    double clip_max) {
  check_clip(clip_min, clip_max);
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  check_launch(cuda::linf_step(dtype_of(x, "x"), x.data_ptr(), grad.data_ptr(), x_nat.data_ptr(), noise_ptr(noise),
                               eps.data_ptr<float>(), alpha.data_ptr<float>(), n, x.numel() / n,
                               static_cast<float>(clip_min), static_cast<float>(clip_max),
                               c10::cuda::getCurrentCUDAStream()),
               "linf_step_");
}

void l2_step_cuda(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min, double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  TORCH_CHECK(x.size(0) <= INT32_MAX, "x: at most 2^31 - 1 rows");  // one block per row
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  check_launch(cuda::l2_step(dtype_of(x, "x"), x.data_ptr(), grad.data_ptr(), x_nat.data_ptr(), noise_ptr(noise),
                             eps.data_ptr<float>(), alpha.data_ptr<float>(), n, x.numel() / n,
                             static_cast<float>(clip_min), static_cast<float>(clip_max),
                             c10::cuda::getCurrentCUDAStream()),
               "l2_step_");
}

at::Tensor start_from_noise_cuda(const at::Tensor& x_nat, const at::Tensor& r, const at::Tensor& scale, bool uniform,
                                 double clip_min, double clip_max) {
  check_row_dense(x_nat, "x_nat");
  check_like(r, x_nat, "r", /*same_dtype=*/false);
  TORCH_CHECK(r.scalar_type() == at::kFloat, "r: expected float32, got ", r.scalar_type());
  check_vec(scale, x_nat.size(0), at::kFloat, x_nat.device(), "scale");
  at::Tensor out = at::empty_like(x_nat);
  if (x_nat.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x_nat.device());
  const int64_t n = x_nat.size(0);
  check_launch(cuda::start_from_noise(dtype_of(x_nat, "x_nat"), out.data_ptr(), x_nat.data_ptr(), r.data_ptr<float>(),
                                      scale.data_ptr<float>(), uniform, n, x_nat.numel() / n,
                                      static_cast<float>(clip_min), static_cast<float>(clip_max),
                                      c10::cuda::getCurrentCUDAStream()),
               "start_from_noise");
  return out;
}

at::Tensor early_stop_update_cuda(const at::Tensor& logits, const at::Tensor& y, at::Tensor budget, at::Tensor kappa) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "logits: expected a contiguous [M, C] tensor, got ",
              logits.sizes());
  const int64_t m = logits.size(0), c = logits.size(1);
  TORCH_CHECK(c > 0 || m == 0, "logits: needs at least one class");
  TORCH_CHECK(y.dim() == 1 && y.size(0) == m && y.is_contiguous() && y.device() == logits.device() &&
              (y.scalar_type() == at::kLong || y.scalar_type() == at::kInt),
              "y: expected a contiguous int64/int32 [", m, "] tensor on ", logits.device());
  check_vec(budget, m, at::kLong, logits.device(), "budget");
  check_vec(kappa, m, at::kLong, logits.device(), "kappa");
  at::Tensor leave = at::empty({m}, logits.options().dtype(at::kBool));
  if (m == 0) return leave;
  const c10::cuda::CUDAGuard guard(logits.device());
  check_launch(cuda::early_stop_update(dtype_of(logits, "logits"), logits.data_ptr(), y.data_ptr(),
                                       y.scalar_type() == at::kInt, budget.data_ptr<int64_t>(),
                                       kappa.data_ptr<int64_t>(), leave.data_ptr<bool>(), m, c,
                                       c10::cuda::getCurrentCUDAStream()),
               "early_stop_update_");
  return leave;
}

std::tuple<at::Tensor, at::Tensor> compaction_plan_cuda(const at::Tensor& leave) {
  TORCH_CHECK(leave.dim() == 1 && leave.scalar_type() == at::kBool && leave.is_contiguous(),
              "leave: expected a contiguous bool [M] tensor");
  const c10::cuda::CUDAGuard guard(leave.device());
  at::Tensor dest = at::empty({leave.size(0)}, leave.options().dtype(at::kLong));
  at::Tensor n_active = at::empty({}, leave.options().dtype(at::kLong));
  check_launch(cuda::compaction_plan(leave.data_ptr<bool>(), dest.data_ptr<int64_t>(), n_active.data_ptr<int64_t>(),
                                     leave.size(0), c10::cuda::getCurrentCUDAStream()),
               "compaction_plan");
  return {dest, n_active};
}

void check_plan(const at::Tensor& dest, const c10::optional<at::Tensor>& index, const c10::optional<at::Tensor>& out,
                int64_t m, const at::Device& dev) {
  check_vec(dest, m, at::kLong, dev, "dest");
  TORCH_CHECK(index.has_value() == out.has_value(), "index and out must be given together");
  if (index.has_value()) check_vec(*index, m, at::kLong, dev, "index");
}

// Unlike the CPU kernels, dest/index values are not bounds-checked here (that would need a host
// synchronisation): they must come from compaction_plan, as fastadv.ops passes them.
void compact_rows_cuda(const at::Tensor& src, const at::Tensor& dest, const c10::optional<at::Tensor>& index,
                       c10::optional<at::Tensor> out, at::Tensor packed) {
  TORCH_CHECK(src.dim() >= 1 && rows_dense(src), "src: rows must be dense blocks (contiguous or channels_last)");
  const int64_t m = src.size(0);
  check_plan(dest, index, out, m, src.device());
  check_rows_like(packed, src, "packed");
  if (out.has_value()) check_rows_like(*out, src, "out");
  if (m == 0) return;
  const c10::cuda::CUDAGuard guard(src.device());
  check_launch(cuda::compact_rows(src.data_ptr(), dest.data_ptr<int64_t>(),
                                  index.has_value() ? index->data_ptr<int64_t>() : nullptr,
                                  out.has_value() ? out->data_ptr() : nullptr, packed.data_ptr(), m,
                                  row_numel(src) * src.element_size(), c10::cuda::getCurrentCUDAStream()),
               "compact_rows");
}

void linf_step_compact_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                            const at::Tensor& eps, const at::Tensor& alpha, const c10::optional<at::Tensor>& noise,
                            const at::Tensor& dest, const at::Tensor& index, at::Tensor out, at::Tensor x_next,
                            at::Tensor x_nat_next, double clip_min, double clip_max) {
  check_clip(clip_min, clip_max);
  check_step(x, grad, x_nat, eps, alpha, noise);
  const int64_t m = x.size(0);
  check_plan(dest, index, out, m, x.device());
  check_rows_like(out, x, "out");
  check_rows_like(x_next, x, "x_next");
  check_rows_like(x_nat_next, x, "x_nat_next");
  TORCH_CHECK(x_next.size(0) == x_nat_next.size(0), "x_next and x_nat_next must have the same number of rows");
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  check_launch(cuda::linf_step_compact(dtype_of(x, "x"), x.data_ptr(), grad.data_ptr(), x_nat.data_ptr(),
                                       noise_ptr(noise), eps.data_ptr<float>(), alpha.data_ptr<float>(),
                                       dest.data_ptr<int64_t>(), index.data_ptr<int64_t>(), out.data_ptr(),
                                       x_next.data_ptr(), x_nat_next.data_ptr(), m, x.numel() / m,
                                       static_cast<float>(clip_min), static_cast<float>(clip_max),
                                       c10::cuda::getCurrentCUDAStream()),
               "linf_step_compact");
}

}  // namespace
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv_native, CUDA, m) {
  m.impl("linf_step_", &fastadv::linf_step_cuda);
  m.impl("l2_step_", &fastadv::l2_step_cuda);
  m.impl("start_from_noise", &fastadv::start_from_noise_cuda);
  m.impl("early_stop_update_", &fastadv::early_stop_update_cuda);
  m.impl("compaction_plan", &fastadv::compaction_plan_cuda);
  m.impl("compact_rows", &fastadv::compact_rows_cuda);
  m.impl("linf_step_compact", &fastadv::linf_step_compact_cuda);
}
