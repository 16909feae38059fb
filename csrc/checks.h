// Memory-safety guards of the kernel ops (torch.ops.fastadv._*), shared by the CPU and CUDA files.
// User input is validated once, in Python (fastadv/ops/_validation.py), before any backend runs;
// these only keep a raw call of a private kernel op from reading or writing out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace fastadv {

// Strides of the dimensions of size > 1: two row-dense tensors with the same key store element j of
// row n at the same offset n*D + j (contiguous vs channels_last differ; size-1 dims don't matter).
inline std::vector<int64_t> layout_key(const at::Tensor& t) {
  std::vector<int64_t> key;
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) != 1) key.push_back(t.stride(d));
  return key;
}

// `t` is laid out like `x` (same shape, same layout, dense rows) on x's device.
inline void check_like(const at::Tensor& t, const at::Tensor& x, const char* name, bool same_dtype = true) {
  TORCH_CHECK(t.sizes() == x.sizes(), name, ": expected shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), name, ": expected device ", x.device(), ", got ", t.device());
  TORCH_CHECK(!same_dtype || t.scalar_type() == x.scalar_type(), name, ": expected dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(layout_key(t) == layout_key(x), name, ": must have the memory layout of x");
}

// Layout of one row: strides of the dimensions 1.. of size > 1 (valid for N = 0 too).
inline std::vector<int64_t> row_layout_key(const at::Tensor& t) {
  std::vector<int64_t> key;
  for (int64_t d = 1; d < t.dim(); ++d)
    if (t.size(d) != 1) key.push_back(t.stride(d));
  return key;
}

// Elements per row.
inline int64_t row_numel(const at::Tensor& t) {
  int64_t d = 1;
  for (int64_t i = 1; i < t.dim(); ++i) d *= t.size(i);
  return d;
}

// Each row is one dense block of D elements, row n starting at element n*D.
inline bool rows_dense(const at::Tensor& t) {
  return t.dim() >= 1 && (t.numel() == 0 || (t.is_non_overlapping_and_dense() &&
                                             (t.size(0) == 1 || t.stride(0) == row_numel(t))));
}

// A row-dense floating tensor: each of the N rows is one block of numel/N elements.
inline void check_row_dense(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() >= 1, name, ": expected a batched tensor [N, ...]");
  TORCH_CHECK(rows_dense(x), name, ": rows must be dense blocks (contiguous or channels_last)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16 ||
              x.scalar_type() == at::kDouble, name, ": expected float64, float32, float16 or bfloat16, got ",
              x.scalar_type());
}

// The compute dtype of a storage dtype: float64 for float64, else float32 (the reference's rule).
inline at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// A contiguous vector of n elements of `dtype` on `device`.
inline void check_vec(const at::Tensor& v, int64_t n, at::ScalarType dtype, const at::Device& device,
                      const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, name, ": expected shape [", n, "], got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", v.scalar_type());
  TORCH_CHECK(v.device() == device, name, ": expected device ", device, ", got ", v.device());
  TORCH_CHECK(v.is_contiguous(), name, ": must be contiguous");
}

inline void check_step(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                       const at::Tensor& eps, const at::Tensor& alpha,
                       const c10::optional<at::Tensor>& noise) {
  check_row_dense(x, "x");
  check_like(grad, x, "grad");
  check_like(x_nat, x, "x_nat");
  check_vec(eps, x.size(0), compute_type(x), x.device(), "eps");
  check_vec(alpha, x.size(0), compute_type(x), x.device(), "alpha");
  if (noise.has_value()) {
    check_like(*noise, x, "noise", /*same_dtype=*/false);
    TORCH_CHECK(noise->scalar_type() == compute_type(x), "noise: expected ", compute_type(x), ", got ",
                noise->scalar_type());
  }
}

// Rows of a tensor of any dtype for the byte-copying compaction kernels.
inline void check_rows_like(const at::Tensor& t, const at::Tensor& src, const char* name) {
  TORCH_CHECK(t.dim() == src.dim() && t.sizes().slice(1) == src.sizes().slice(1), name,
              ": expected rows of shape ", src.sizes().slice(1), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == src.scalar_type(), name, ": expected dtype ", src.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == src.device(), name, ": expected device ", src.device(), ", got ", t.device());
  TORCH_CHECK(rows_dense(t) && row_layout_key(t) == row_layout_key(src), name,
              ": must have the memory layout of src");
}

// The plan of a compaction: dest [M] (and index [M] when leavers has rows to receive them), int64,
// and the error flag (int32 [1]) the kernels raise instead of writing out of bounds.
inline void check_plan(const at::Tensor& dest, const c10::optional<at::Tensor>& index,
                       const c10::optional<at::Tensor>& leavers, const at::Tensor& errors, int64_t m,
                       const at::Device& dev) {
  check_vec(dest, m, at::kLong, dev, "dest");
  TORCH_CHECK(index.has_value() == leavers.has_value(), "index and leavers must be given together");
  if (index.has_value()) check_vec(*index, m, at::kLong, dev, "index");
  check_vec(errors, 1, at::kInt, dev, "errors");
}

// The arguments of the fused step + compaction: a step's, a plan's, and output rows like x's.
inline void check_step_compact(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                               const at::Tensor& eps, const at::Tensor& alpha, const c10::optional<at::Tensor>& noise,
                               const at::Tensor& dest, const at::Tensor& index, const at::Tensor& leavers,
                               const at::Tensor& x_next, const at::Tensor& x_nat_next, const at::Tensor& errors) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  check_plan(dest, index, leavers, errors, x.size(0), x.device());
  check_rows_like(leavers, x, "leavers");
  check_rows_like(x_next, x, "x_next");
  check_rows_like(x_nat_next, x, "x_nat_next");
  TORCH_CHECK(x_next.size(0) == x_nat_next.size(0), "x_next and x_nat_next must have the same number of rows");
}

}  // namespace fastadv
