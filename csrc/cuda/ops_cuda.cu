// CUDA kernels of the native backend and their launchers, registered as torch.ops.fastadv._* for
// the CUDA dispatch key. Elementwise kernels are grid-stride loops over 128-bit packs when every row
// is a whole number of packs and the pointers are 16-byte aligned, else over single elements. The
// compute type is double for float64 tensors and float otherwise, with explicitly rounded operations
// (fastadv_math.h), so results match the CPU kernels and the torch reference bit for bit (the L2
// step's norms: a float64 sum in another order, rounded once).
//
// Compaction never writes out of bounds: a row whose dest/index is out of range is skipped and
// raises the int32 `errors` flag, which fastadv.ops reads with the host read it already makes.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // the current stream, without ATen/cuda/CUDAContext.h's cuBLAS headers
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "../checks.h"
#include "../fastadv_math.h"

namespace fastadv {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

// Storage <-> compute type (float, or double for float64), rounded to nearest even.
template <typename T> using compute_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T st(compute_t<T> f);
template <> __device__ __forceinline__ double st<double>(double f) { return f; }
template <> __device__ __forceinline__ float st<float>(float f) { return f; }
template <> __device__ __forceinline__ __half st<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

// V elements moved together: one 128-bit access per 16 bytes (16-byte alignment is checked by the host).
template <typename T, int V>
struct alignas(16) Pack {
  T v[V];
};
template <typename T>
struct Pack<T, 1> {  // the scalar path needs no alignment beyond T's
  T v[1];
};
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

inline int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename F>
void with_type(const at::Tensor& t, const F& f) {
  switch (t.scalar_type()) {
    case at::kDouble: return f(double{});
    case at::kFloat: return f(float{});
    case at::kHalf: return f(__half{});
    case at::kBFloat16: return f(__nv_bfloat16{});
    default: TORCH_CHECK(false, "expected float64, float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

template <typename T> T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }
template <typename A> const A* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<A>() : nullptr;
}

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "fastadv::", op, ": CUDA error: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

// ----------------------------------------------------------------------------- L∞ step (+ compaction)
// Compact = false: out == x, in place (so x is not __restrict__). Compact = true: rows go to
// x_next[dest] (dest < P) or, for leavers, to out[index] (index < R); anything else raises *errors.
template <typename T, int V, bool HasNoise, bool Compact, typename A = compute_t<T>>
__global__ void linf_kernel(const T* x, const T* __restrict__ g, const T* __restrict__ xn,
                            const A* __restrict__ noise, const A* __restrict__ eps, const A* __restrict__ alpha,
                            const int64_t* __restrict__ dest, const int64_t* __restrict__ index, T* out, T* x_next,
                            T* xn_next, int* errors, int64_t packs, int64_t d, int64_t P, int64_t R, A lo, A hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = i * V, row = e0 / d, col = e0 - row * d;  // a pack never straddles rows
    const Pack<T, V> px = load<T, V>(x + e0);
    int64_t to = row;
    if (Compact) {
      to = dest[row];
      if (to < 0) {  // a leaver: its current iterate goes to its original position
        const int64_t back = index[row];
        if (to == -1 && back >= 0 && back < R)
          store<T, V>(out + back * d + col, px);
        else
          *errors = 1;
        continue;
      }
      if (to >= P) {
        *errors = 1;
        continue;
      }
    }
    const Pack<T, V> pg = load<T, V>(g + e0), pn = load<T, V>(xn + e0);
    const A e = eps[row], a = alpha[row];
    Pack<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const A nz = HasNoise ? noise[e0 + k] : A(0);
      y.v[k] = st<T>(linf_value<HasNoise>(ld(px.v[k]), ld(pg.v[k]), ld(pn.v[k]), e, a, nz, lo, hi));
    }
    if (Compact) {
      store<T, V>(x_next + to * d + col, y);
      store<T, V>(xn_next + to * d + col, pn);
    } else {
      store<T, V>(out + e0, y);
    }
  }
}

template <typename T, bool Compact, typename A = compute_t<T>>
void launch_linf(const T* x, const T* g, const T* xn, const A* noise, const A* eps, const A* alpha, const int64_t* dest,
                 const int64_t* index, T* out, T* x_next, T* xn_next, int* errors, int64_t n, int64_t d, int64_t P,
                 int64_t R, A lo, A hi) {
  constexpr int V = 16 / sizeof(T);
  // Rows of 0 elements are never launched; tensors of 0 rows are passed as x (never written).
  const bool vec = d % V == 0 && aligned16(x) && aligned16(g) && aligned16(xn) && aligned16(out) &&
                   (!noise || aligned16(noise)) && (!Compact || (aligned16(x_next) && aligned16(xn_next)));
  const int64_t total = n * d;
#define FA_LAUNCH(VV, NOISE)                                                                           \
  linf_kernel<T, VV, NOISE, Compact><<<blocks_for(total / VV), kThreads, 0, stream()>>>(                \
      x, g, xn, noise, eps, alpha, dest, index, out, x_next, xn_next, errors, total / VV, d, P, R, lo, hi)
  if (vec) {
    if (noise) FA_LAUNCH(V, true); else FA_LAUNCH(V, false);
  } else {
    if (noise) FA_LAUNCH(1, true); else FA_LAUNCH(1, false);
  }
#undef FA_LAUNCH
}

void linf_step_cuda(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                    const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min,
                    double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  with_type(x, [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    launch_linf<T, false>(ptr<const T>(x), ptr<const T>(grad), ptr<const T>(x_nat), opt_ptr<A>(noise),
                          eps.data_ptr<A>(), alpha.data_ptr<A>(), nullptr, nullptr, ptr<T>(x), nullptr, nullptr,
                          nullptr, n, x.numel() / n, 0, 0, static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
  check_launch("_linf_step_");
}

// ----------------------------------------------------------------------------- random start
template <typename T, int V, bool Uniform, typename A = compute_t<T>>
__global__ void start_kernel(T* __restrict__ out, const T* __restrict__ xn, const A* __restrict__ r,
                             const A* __restrict__ scale, int64_t packs, int64_t d, A lo, A hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = i * V;
    const A s = scale[e0 / d];
    const Pack<T, V> pn = load<T, V>(xn + e0);
    Pack<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = st<T>(start_value<Uniform>(ld(pn.v[k]), r[e0 + k], s, lo, hi));
    store<T, V>(out + e0, y);
  }
}

at::Tensor start_from_noise_cuda(const at::Tensor& x_nat, const at::Tensor& r, const at::Tensor& scale, bool uniform,
                                 double clip_min, double clip_max) {
  check_row_dense(x_nat, "x_nat");
  check_like(r, x_nat, "r", /*same_dtype=*/false);
  TORCH_CHECK(r.scalar_type() == compute_type(x_nat), "r: expected ", compute_type(x_nat), ", got ", r.scalar_type());
  check_vec(scale, x_nat.size(0), compute_type(x_nat), x_nat.device(), "scale");
  at::Tensor out = at::empty_like(x_nat);
  if (x_nat.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(x_nat.device());
  const int64_t total = x_nat.numel(), d = total / x_nat.size(0);
  with_type(x_nat, [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    constexpr int V = 16 / sizeof(T);
    const bool vec = d % V == 0 && aligned16(out.data_ptr()) && aligned16(x_nat.data_ptr()) && aligned16(r.data_ptr());
    const A lo = static_cast<A>(clip_min), hi = static_cast<A>(clip_max);
#define FA_LAUNCH(VV, U)                                                                                     \
  start_kernel<T, VV, U><<<blocks_for(total / VV), kThreads, 0, stream()>>>(                                  \
      ptr<T>(out), ptr<const T>(x_nat), r.data_ptr<A>(), scale.data_ptr<A>(), total / VV, d, lo, hi)
    if (vec) {
      if (uniform) FA_LAUNCH(V, true); else FA_LAUNCH(V, false);
    } else {
      if (uniform) FA_LAUNCH(1, true); else FA_LAUNCH(1, false);
    }
#undef FA_LAUNCH
  });
  check_launch("_start_from_noise");
  return out;
}

// ----------------------------------------------------------------------------- L2 step
// Sum over the block; every thread gets the result. `shared` holds one double per warp.
__device__ double block_sum(double v, double* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row; norms are the square root of a float64 sum, rounded once to A (the reference's).
template <typename T, bool HasNoise, typename A = compute_t<T>>
__global__ void l2_kernel(T* x, const T* __restrict__ g, const T* __restrict__ xn, const A* __restrict__ noise,
                          const A* __restrict__ eps, const A* __restrict__ alpha, int64_t d, A lo, A hi) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x, o = row * d;
  double gg = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const double v = ld(g[o + j]);
    gg = __dadd_rn(gg, __dmul_rn(v, v));
  }
  const A gn = max_nan(static_cast<A>(sqrt(block_sum(gg, shared))), l2_norm_floor<A>());
  const A a = alpha[row];
  auto delta = [&](int64_t j) {  // y - xn, rounded as the reference does
    A y = fadd(static_cast<A>(ld(x[o + j])), fmul(a, fdiv(static_cast<A>(ld(g[o + j])), gn)));
    if (HasNoise) y = fadd(y, noise[o + j]);
    return fsub(y, static_cast<A>(ld(xn[o + j])));
  };
  double dd = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const double v = delta(j);
    dd = __dadd_rn(dd, __dmul_rn(v, v));
  }
  const A dn = max_nan(static_cast<A>(sqrt(block_sum(dd, shared))), l2_norm_floor<A>());
  const A factor = min_nan(fdiv(eps[row], dn), A(1));
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {  // each thread rewrites only what it read
    const A v = delta(j);
    x[o + j] = st<T>(min_nan(max_nan(fadd(static_cast<A>(ld(xn[o + j])), fmul(v, factor)), lo), hi));
  }
}

void l2_step_cuda(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                  const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min, double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  TORCH_CHECK(x.size(0) <= INT32_MAX, "x: at most 2^31 - 1 rows");  // one block per row
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), d = x.numel() / n;
  with_type(x, [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    const unsigned grid = static_cast<unsigned>(n);
    const A lo = static_cast<A>(clip_min), hi = static_cast<A>(clip_max);
    const A* nz = opt_ptr<A>(noise);
    if (nz)
      l2_kernel<T, true><<<grid, kThreads, 0, stream()>>>(ptr<T>(x), ptr<const T>(grad), ptr<const T>(x_nat), nz,
                                                          eps.data_ptr<A>(), alpha.data_ptr<A>(), d, lo, hi);
    else
      l2_kernel<T, false><<<grid, kThreads, 0, stream()>>>(ptr<T>(x), ptr<const T>(grad), ptr<const T>(x_nat), nz,
                                                           eps.data_ptr<A>(), alpha.data_ptr<A>(), d, lo, hi);
  });
  check_launch("_l2_step_");
}

// ----------------------------------------------------------------------------- DAT's FOSC step
// One block per row: c = eps*||g||_1 - <x - x0, g> (float64 sums of compute-dtype terms, each
// rounded once to A, as the reference), then the L-inf step of the row if always or c > thr.
template <typename T, typename A = compute_t<T>>
__global__ void fosc_kernel(T* x, const T* __restrict__ g, const T* __restrict__ xn, const T* __restrict__ x0,
                            const A* __restrict__ eps, const A* __restrict__ alpha, A* __restrict__ fosc, int64_t d,
                            A thr, bool always, A lo, A hi) {
  __shared__ double shared[32];
  const int64_t row = blockIdx.x, o = row * d;
  double l1 = 0.0, dot = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const A gj = static_cast<A>(ld(g[o + j]));
    const A dj = fsub(static_cast<A>(ld(x[o + j])), static_cast<A>(ld(x0[o + j])));
    l1 = __dadd_rn(l1, static_cast<double>(gj < A(0) ? -gj : gj));
    dot = __dadd_rn(dot, __dmul_rn(static_cast<double>(dj), static_cast<double>(gj)));
  }
  const A l1a = static_cast<A>(block_sum(l1, shared));
  const A dota = static_cast<A>(block_sum(dot, shared));
  const A e = eps[row];
  const A c = fsub(fmul(e, l1a), dota);
  if (threadIdx.x == 0) fosc[row] = c;
  if (!(always || c > thr)) return;  // the row stops: x keeps its iterate
  const A a = alpha[row];
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)  // each thread rewrites only what it read
    x[o + j] = st<T>(linf_value<false>(static_cast<A>(ld(x[o + j])), static_cast<A>(ld(g[o + j])),
                                       static_cast<A>(ld(xn[o + j])), e, a, A(0), lo, hi));
}

at::Tensor linf_fosc_step_cuda(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat,
                               const at::Tensor& x_start, const at::Tensor& eps, const at::Tensor& alpha,
                               double threshold, bool always, double clip_min, double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, c10::nullopt);
  check_like(x_start, x, "x_start");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0);
  at::Tensor fosc = at::empty({n}, x.options().dtype(compute_type(x)));
  if (x.numel() == 0) return fosc.zero_();
  TORCH_CHECK(n <= INT32_MAX, "x: at most 2^31 - 1 rows");  // one block per row
  const int64_t d = x.numel() / n;
  with_type(x, [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    fosc_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, stream()>>>(
        ptr<T>(x), ptr<const T>(grad), ptr<const T>(x_nat), ptr<const T>(x_start), eps.data_ptr<A>(),
        alpha.data_ptr<A>(), fosc.data_ptr<A>(), d, static_cast<A>(threshold), always, static_cast<A>(clip_min),
        static_cast<A>(clip_max));
  });
  check_launch("_linf_fosc_step_");
  return fosc;
}

// ----------------------------------------------------------------------------- early stop
template <typename T, typename Y, typename A = compute_t<T>>
__global__ void early_stop_kernel(const T* __restrict__ logits, const Y* __restrict__ y, int64_t* budget,
                                  int64_t* kappa, bool* leave, int64_t m, int64_t c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* row = logits + i * c;
    A best = ld(row[0]);
    int64_t bi = 0;
    for (int64_t k = 1; k < c && best == best; ++k) {  // torch.argmax: first maximum, NaN is the maximum
      const A v = ld(row[k]);
      if (v > best || v != v) {
        best = v;
        bi = k;
      }
    }
    const bool wrong = bi != static_cast<int64_t>(y[i]);
    const bool leaves = wrong && budget[i] == 0;
    leave[i] = leaves;
    budget[i] -= (wrong && !leaves);
    kappa[i] += !wrong;
  }
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
  with_type(logits, [&](auto tag) {
    using T = decltype(tag);
    if (y.scalar_type() == at::kInt)
      early_stop_kernel<T, int32_t><<<blocks_for(m), kThreads, 0, stream()>>>(
          ptr<const T>(logits), y.data_ptr<int32_t>(), budget.data_ptr<int64_t>(), kappa.data_ptr<int64_t>(),
          leave.data_ptr<bool>(), m, c);
    else
      early_stop_kernel<T, int64_t><<<blocks_for(m), kThreads, 0, stream()>>>(
          ptr<const T>(logits), y.data_ptr<int64_t>(), budget.data_ptr<int64_t>(), kappa.data_ptr<int64_t>(),
          leave.data_ptr<bool>(), m, c);
  });
  check_launch("_early_stop_update_");
  return leave;
}

// ----------------------------------------------------------------------------- compaction
// One block scans the whole mask in chunks of blockDim.x (m is a batch size: a few thousand at most).
__global__ void plan_kernel(const bool* __restrict__ leave, int64_t* __restrict__ dest, int64_t* n_active, int64_t m) {
  __shared__ int64_t warp_sums[32];
  int64_t carry = 0;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t base = 0; base < m; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const int64_t keep = (i < m && !leave[i]) ? 1 : 0;
    int64_t incl = keep;  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int64_t before = 0, chunk = 0;  // keeps in earlier warps of this chunk, and in the whole chunk
    for (int w = 0; w < warps; ++w) {
      before += w < warp ? warp_sums[w] : 0;
      chunk += warp_sums[w];
    }
    if (i < m) dest[i] = keep ? carry + before + incl - 1 : -1;
    carry += chunk;
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
  if (threadIdx.x == 0) *n_active = carry;
}

std::tuple<at::Tensor, at::Tensor> compaction_plan_cuda(const at::Tensor& leave) {
  TORCH_CHECK(leave.dim() == 1 && leave.scalar_type() == at::kBool && leave.is_contiguous(),
              "leave: expected a contiguous bool [M] tensor");
  const c10::cuda::CUDAGuard guard(leave.device());
  at::Tensor dest = at::empty({leave.size(0)}, leave.options().dtype(at::kLong));
  at::Tensor n_active = at::empty({}, leave.options().dtype(at::kLong));
  plan_kernel<<<1, 1024, 0, stream()>>>(leave.data_ptr<bool>(), dest.data_ptr<int64_t>(), n_active.data_ptr<int64_t>(),
                                        leave.size(0));  // m = 0 still writes n_active = 0
  check_launch("_compaction_plan");
  return {dest, n_active};
}

// Rows as raw units U (the widest that divides the row and every pointer's alignment).
template <typename U>
__global__ void compact_kernel(const U* __restrict__ src, const int64_t* __restrict__ dest,
                               const int64_t* __restrict__ index, U* out, U* packed, int* errors, int64_t m,
                               int64_t units, int64_t P, int64_t R) {
  const int64_t total = m * units;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = k / units, col = k - row * units, to = dest[row];
    if (to >= 0 && to < P) {
      packed[to * units + col] = src[k];
    } else if (to == -1) {
      if (out) {
        const int64_t back = index[row];
        if (back >= 0 && back < R)
          out[back * units + col] = src[k];
        else
          *errors = 1;
      }
    } else {
      *errors = 1;
    }
  }
}

void compact_rows_cuda(const at::Tensor& src, const at::Tensor& dest, const c10::optional<at::Tensor>& index,
                       c10::optional<at::Tensor> leavers, at::Tensor packed, at::Tensor errors) {
  TORCH_CHECK(src.dim() >= 1 && rows_dense(src), "src: rows must be dense blocks (contiguous or channels_last)");
  const int64_t m = src.size(0);
  check_plan(dest, index, leavers, errors, m, src.device());
  check_rows_like(packed, src, "packed");
  if (leavers.has_value()) check_rows_like(*leavers, src, "leavers");
  const int64_t row_bytes = row_numel(src) * src.element_size();
  if (m == 0 || row_bytes == 0) return;
  const c10::cuda::CUDAGuard guard(src.device());
  const void* s = src.data_ptr();
  void* pk = packed.numel() ? packed.data_ptr() : nullptr;
  void* o = leavers.has_value() && leavers->numel() ? leavers->data_ptr() : nullptr;
  const int64_t* ix = index.has_value() ? index->data_ptr<int64_t>() : nullptr;
  const int64_t P = packed.size(0), R = leavers.has_value() ? leavers->size(0) : 0;
  const bool has_out = leavers.has_value();
  const uintptr_t a = reinterpret_cast<uintptr_t>(s) | reinterpret_cast<uintptr_t>(pk) |
                      reinterpret_cast<uintptr_t>(o) | static_cast<uintptr_t>(row_bytes);
  auto launch = [&](auto unit) {
    using U = decltype(unit);
    const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U));
    // A 0-row `leavers` still takes part (every leaver is then out of range and raises the flag).
    U* out = has_out ? (o ? static_cast<U*>(o) : static_cast<U*>(const_cast<void*>(s))) : nullptr;
    compact_kernel<U><<<blocks_for(m * units), kThreads, 0, stream()>>>(
        static_cast<const U*>(s), dest.data_ptr<int64_t>(), ix, out, static_cast<U*>(pk), errors.data_ptr<int>(), m,
        units, P, R);
  };
  if (a % 16 == 0) launch(uint4{});
  else if (a % 8 == 0) launch(uint2{});
  else if (a % 4 == 0) launch(uint32_t{});
  else if (a % 2 == 0) launch(uint16_t{});
  else launch(uint8_t{});
  check_launch("_compact_rows");
}

void linf_step_compact_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                            const at::Tensor& eps, const at::Tensor& alpha, const c10::optional<at::Tensor>& noise,
                            const at::Tensor& dest, const at::Tensor& index, at::Tensor leavers, at::Tensor x_next,
                            at::Tensor x_nat_next, at::Tensor errors, double clip_min, double clip_max) {
  check_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, leavers, x_next, x_nat_next, errors);
  const int64_t m = x.size(0);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  with_type(x, [&](auto tag) {
    using T = decltype(tag);
    using A = compute_t<T>;
    // Tensors with no rows are never written (every row fails the range test): pass x instead.
    T* fallback = const_cast<T*>(ptr<const T>(x));
    T* out = leavers.numel() ? ptr<T>(leavers) : fallback;
    T* xn = x_next.numel() ? ptr<T>(x_next) : fallback;
    T* nn = x_nat_next.numel() ? ptr<T>(x_nat_next) : fallback;
    launch_linf<T, true>(ptr<const T>(x), ptr<const T>(grad), ptr<const T>(x_nat), opt_ptr<A>(noise), eps.data_ptr<A>(),
                         alpha.data_ptr<A>(), dest.data_ptr<int64_t>(), index.data_ptr<int64_t>(), out, xn, nn,
                         errors.data_ptr<int>(), m, x.numel() / m, x_next.size(0), leavers.size(0),
                         static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
  check_launch("_linf_step_compact");
}

}  // namespace
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CUDA, m) {
  m.impl("_linf_step_", &fastadv::linf_step_cuda);
  m.impl("_l2_step_", &fastadv::l2_step_cuda);
  m.impl("_start_from_noise", &fastadv::start_from_noise_cuda);
  m.impl("_early_stop_update_", &fastadv::early_stop_update_cuda);
  m.impl("_compaction_plan", &fastadv::compaction_plan_cuda);
  m.impl("_compact_rows", &fastadv::compact_rows_cuda);
  m.impl("_linf_step_compact", &fastadv::linf_step_compact_cuda);
  m.impl("_linf_fosc_step_", &fastadv::linf_fosc_step_cuda);
}
