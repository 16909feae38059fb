// CUDA kernels of the native backend: raw pointers, sizes and a stream; no torch headers, so that
// scripts/compile_cuda.sh can compile them with nvcc on a machine whose torch has no CUDA.
//
// Layout contract (see fastadv/ops/library.py): every x-like tensor is N rows of D contiguous
// elements (row n at element n*D), all in the same layout; eps/alpha/scale are float32 [N]; noise and
// r are float32 in the same layout; budget/kappa/dest/index are int64 [N]. Every launcher returns
// the launch's cudaError_t.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastadv {
namespace cuda {

// Storage dtype of the floating tensors.
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// x <- clip(proj_inf(x + alpha*sign(grad) [+ noise], x_nat, eps)), in place. noise may be null.
cudaError_t linf_step(DType dtype, void* x, const void* grad, const void* x_nat, const float* noise,
                      const float* eps, const float* alpha, int64_t n, int64_t d, float clip_min,
                      float clip_max, cudaStream_t stream);

// x <- clip(proj_2(x + alpha*grad/||grad|| [+ noise], x_nat, eps)), one block per row.
cudaError_t l2_step(DType dtype, void* x, const void* grad, const void* x_nat, const float* noise,
                    const float* eps, const float* alpha, int64_t n, int64_t d, float clip_min,
                    float clip_max, cudaStream_t stream);

// out <- clip(x_nat + (2r - 1)*scale) (uniform) or clip(x_nat + r*scale) (normal).
cudaError_t start_from_noise(DType dtype, void* out, const void* x_nat, const float* r, const float* scale,
                             bool uniform, int64_t n, int64_t d, float clip_min, float clip_max,
                             cudaStream_t stream);

// FAT's early-stop check on logits [m, c]; y is int64 (y_is_int32 false) or int32.
cudaError_t early_stop_update(DType dtype, const void* logits, const void* y, bool y_is_int32, int64_t* budget,
                              int64_t* kappa, bool* leave, int64_t m, int64_t c, cudaStream_t stream);

// dest[i] = rank of row i among the rows that stay (-1 for leavers); *n_active = their count.
cudaError_t compaction_plan(const bool* leave, int64_t* dest, int64_t* n_active, int64_t m, cudaStream_t stream);

// packed[dest[i]] = src[i] where dest[i] >= 0; out[index[i]] = src[i] elsewhere (out may be null).
// Rows are row_bytes raw bytes (any dtype).
cudaError_t compact_rows(const void* src, const int64_t* dest, const int64_t* index, void* out, void* packed,
                         int64_t m, int64_t row_bytes, cudaStream_t stream);

// Fused L∞ step and compaction: x_next[dest[i]] = step(x[i]), x_nat_next[dest[i]] = x_nat[i] for
// dest[i] >= 0; out[index[i]] = x[i] for leavers. x is not modified.
cudaError_t linf_step_compact(DType dtype, const void* x, const void* grad, const void* x_nat, const float* noise,
                              const float* eps, const float* alpha, const int64_t* dest, const int64_t* index,
                              void* out, void* x_next, void* x_nat_next, int64_t m, int64_t d, float clip_min,
                              float clip_max, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastadv
