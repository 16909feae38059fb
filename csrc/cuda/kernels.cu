// CUDA kernels of the native backend (torch-free; see kernels.cuh). Elementwise kernels are
// grid-stride loops over 128-bit packs when every row is a whole number of packs and the pointers
// are 16-byte aligned, else over single elements. All arithmetic is float32 with explicitly rounded
// operations (fastadv_math.h), so results match the CPU kernels and the torch reference bit for bit
// (the L2 step's norms: to float32 rounding).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../fastadv_math.h"
#include "kernels.cuh"

namespace fastadv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // grid-stride loops cover the rest

// float32 <-> storage dtype, rounded to nearest even.
__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T st(float f);
template <> __device__ __forceinline__ float st<float>(float f) { return f; }
template <> __device__ __forceinline__ __half st<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

// V elements moved together: one 128-bit access per 16 bytes (16-byte alignment is checked by the host).
template <typename T, int V>
struct alignas(16) Pack {
  T v[V];
};
template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}
template <typename T>
struct Pack<T, 1> {  // the scalar path needs no alignment beyond T's
  T v[1];
};

inline int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ----------------------------------------------------------------------------- L∞ step (+ compaction)
// Compact = false: out == x, in place (so x is not __restrict__). Compact = true: rows go to
// x_next[dest] / out[index].
template <typename T, int V, bool HasNoise, bool Compact>
__global__ void linf_kernel(const T* x, const T* __restrict__ g, const T* __restrict__ xn,
                            const float* __restrict__ noise, const float* __restrict__ eps,
                            const float* __restrict__ alpha, const int64_t* __restrict__ dest,
                            const int64_t* __restrict__ index, T* out, T* x_next, T* xn_next, int64_t packs,
                            int64_t d, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = i * V, row = e0 / d, col = e0 - row * d;  // a pack never straddles rows
    const Pack<T, V> px = load<T, V>(x + e0);
    int64_t to = row;
    if (Compact) {
      to = dest[row];
      if (to < 0) {  // a leaver: its current iterate goes to its original position
        store<T, V>(out + index[row] * d + col, px);
        continue;
      }
    }
    const Pack<T, V> pg = load<T, V>(g + e0), pn = load<T, V>(xn + e0);
    const float e = eps[row], a = alpha[row];
    Pack<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float nz = HasNoise ? noise[e0 + k] : 0.f;
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

template <typename T, bool Compact>
cudaError_t launch_linf(const T* x, const T* g, const T* xn, const float* noise, const float* eps, const float* alpha,
                        const int64_t* dest, const int64_t* index, T* out, T* x_next, T* xn_next, int64_t n,
                        int64_t d, float lo, float hi, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = d % V == 0 && aligned16(x) && aligned16(g) && aligned16(xn) && aligned16(out) &&
                   (!noise || aligned16(noise)) && (!Compact || (aligned16(x_next) && aligned16(xn_next)));
  const int64_t total = n * d;
#define FA_LAUNCH(VV, NOISE)                                                                              \
  linf_kernel<T, VV, NOISE, Compact><<<blocks_for(total / VV), kThreads, 0, stream>>>(                    \
      x, g, xn, noise, eps, alpha, dest, index, out, x_next, xn_next, total / VV, d, lo, hi)
  if (vec) {
    if (noise) FA_LAUNCH(V, true); else FA_LAUNCH(V, false);
  } else {
    if (noise) FA_LAUNCH(1, true); else FA_LAUNCH(1, false);
  }
#undef FA_LAUNCH
  return cudaGetLastError();
}

// ----------------------------------------------------------------------------- random start
template <typename T, int V, bool Uniform>
__global__ void start_kernel(T* __restrict__ out, const T* __restrict__ xn, const float* __restrict__ r,
                             const float* __restrict__ scale, int64_t packs, int64_t d, float lo, float hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e0 = i * V;
    const float s = scale[e0 / d];
    const Pack<T, V> pn = load<T, V>(xn + e0);
    Pack<T, V> y;
#pragma unroll
    for (int k = 0; k < V; ++k) y.v[k] = st<T>(start_value<Uniform>(ld(pn.v[k]), r[e0 + k], s, lo, hi));
    store<T, V>(out + e0, y);
  }
}

template <typename T>
cudaError_t launch_start(T* out, const T* xn, const float* r, const float* scale, bool uniform, int64_t n,
                         int64_t d, float lo, float hi, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = d % V == 0 && aligned16(out) && aligned16(xn) && aligned16(r);
  const int64_t total = n * d;
#define FA_LAUNCH(VV, U) \
  start_kernel<T, VV, U><<<blocks_for(total / VV), kThreads, 0, stream>>>(out, xn, r, scale, total / VV, d, lo, hi)
  if (vec) {
    if (uniform) FA_LAUNCH(V, true); else FA_LAUNCH(V, false);
  } else {
    if (uniform) FA_LAUNCH(1, true); else FA_LAUNCH(1, false);
  }
#undef FA_LAUNCH
  return cudaGetLastError();
}

// ----------------------------------------------------------------------------- L2 step
// Sum over the block; every thread gets the result. `shared` holds one float per warp.
__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? shared[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, bool HasNoise>
__global__ void l2_kernel(T* x, const T* __restrict__ g, const T* __restrict__ xn, const float* __restrict__ noise,
                          const float* __restrict__ eps, const float* __restrict__ alpha, int64_t d, float lo,
                          float hi) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x, o = row * d;
  float gg = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = ld(g[o + j]);
    gg = fadd(gg, fmul(v, v));
  }
  const float gn = max_nan(sqrtf(block_sum(gg, shared)), kL2NormFloor);
  const float a = alpha[row];
  auto delta = [&](int64_t j) {  // y - xn, rounded as the reference does
    float y = fadd(ld(x[o + j]), fmul(a, __fdiv_rn(ld(g[o + j]), gn)));
    if (HasNoise) y = fadd(y, noise[o + j]);
    return fsub(y, ld(xn[o + j]));
  };
  float dd = 0.f;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = delta(j);
    dd = fadd(dd, fmul(v, v));
  }
  const float dn = max_nan(sqrtf(block_sum(dd, shared)), kL2NormFloor);
  const float factor = min_nan(__fdiv_rn(eps[row], dn), 1.f);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {  // each thread rewrites only what it read
    const float v = delta(j);
    x[o + j] = st<T>(min_nan(max_nan(fadd(ld(xn[o + j]), fmul(v, factor)), lo), hi));
  }
}

// ----------------------------------------------------------------------------- early stop
template <typename T, typename Y>
__global__ void early_stop_kernel(const T* __restrict__ logits, const Y* __restrict__ y, int64_t* budget,
                                  int64_t* kappa, bool* leave, int64_t m, int64_t c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T* row = logits + i * c;
    float best = ld(row[0]);
    int64_t bi = 0;
    for (int64_t k = 1; k < c && best == best; ++k) {  // torch.argmax: first maximum, NaN is the maximum
      const float v = ld(row[k]);
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

template <typename U>
__global__ void compact_kernel(const U* __restrict__ src, const int64_t* __restrict__ dest,
                               const int64_t* __restrict__ index, U* out, U* packed, int64_t m, int64_t units) {
  const int64_t total = m * units;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = k / units, col = k - row * units, to = dest[row];
    if (to >= 0)
      packed[to * units + col] = src[k];
    else if (out)
      out[index[row] * units + col] = src[k];
  }
}

template <typename U>
cudaError_t launch_compact(const void* src, const int64_t* dest, const int64_t* index, void* out, void* packed,
                           int64_t m, int64_t row_bytes, cudaStream_t stream) {
  const int64_t units = row_bytes / sizeof(U);
  compact_kernel<U><<<blocks_for(m * units), kThreads, 0, stream>>>(
      static_cast<const U*>(src), dest, index, static_cast<U*>(out), static_cast<U*>(packed), m, units);
  return cudaGetLastError();
}

template <typename F>
cudaError_t with_type(DType dtype, const F& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

// ----------------------------------------------------------------------------- entry points
cudaError_t linf_step(DType dtype, void* x, const void* grad, const void* x_nat, const float* noise, const float* eps,
                      const float* alpha, int64_t n, int64_t d, float clip_min, float clip_max, cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_linf<T, false>(static_cast<const T*>(x), static_cast<const T*>(grad), static_cast<const T*>(x_nat),
                                 noise, eps, alpha, nullptr, nullptr, static_cast<T*>(x), nullptr, nullptr, n, d,
                                 clip_min, clip_max, stream);
  });
}

cudaError_t linf_step_compact(DType dtype, const void* x, const void* grad, const void* x_nat, const float* noise,
                              const float* eps, const float* alpha, const int64_t* dest, const int64_t* index,
                              void* out, void* x_next, void* x_nat_next, int64_t m, int64_t d, float clip_min,
                              float clip_max, cudaStream_t stream) {
  if (m == 0 || d == 0) return cudaSuccess;
  return with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_linf<T, true>(static_cast<const T*>(x), static_cast<const T*>(grad), static_cast<const T*>(x_nat),
                                noise, eps, alpha, dest, index, static_cast<T*>(out), static_cast<T*>(x_next),
                                static_cast<T*>(x_nat_next), m, d, clip_min, clip_max, stream);
  });
}

cudaError_t l2_step(DType dtype, void* x, const void* grad, const void* x_nat, const float* noise, const float* eps,
                    const float* alpha, int64_t n, int64_t d, float clip_min, float clip_max, cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto* xx = static_cast<T*>(x);
    auto* g = static_cast<const T*>(grad);
    auto* xn = static_cast<const T*>(x_nat);
    const unsigned grid = static_cast<unsigned>(n);  // one block per row
    if (noise)
      l2_kernel<T, true><<<grid, kThreads, 0, stream>>>(xx, g, xn, noise, eps, alpha, d, clip_min, clip_max);
    else
      l2_kernel<T, false><<<grid, kThreads, 0, stream>>>(xx, g, xn, noise, eps, alpha, d, clip_min, clip_max);
    return cudaGetLastError();
  });
}

cudaError_t start_from_noise(DType dtype, void* out, const void* x_nat, const float* r, const float* scale,
                             bool uniform, int64_t n, int64_t d, float clip_min, float clip_max, cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_start<T>(static_cast<T*>(out), static_cast<const T*>(x_nat), r, scale, uniform, n, d, clip_min,
                           clip_max, stream);
  });
}

cudaError_t early_stop_update(DType dtype, const void* logits, const void* y, bool y_is_int32, int64_t* budget,
                              int64_t* kappa, bool* leave, int64_t m, int64_t c, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  return with_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto* lg = static_cast<const T*>(logits);
    if (y_is_int32)
      early_stop_kernel<T, int32_t><<<blocks_for(m), kThreads, 0, stream>>>(lg, static_cast<const int32_t*>(y),
                                                                             budget, kappa, leave, m, c);
    else
      early_stop_kernel<T, int64_t><<<blocks_for(m), kThreads, 0, stream>>>(lg, static_cast<const int64_t*>(y),
                                                                             budget, kappa, leave, m, c);
    return cudaGetLastError();
  });
}

cudaError_t compaction_plan(const bool* leave, int64_t* dest, int64_t* n_active, int64_t m, cudaStream_t stream) {
  plan_kernel<<<1, 1024, 0, stream>>>(leave, dest, n_active, m);  // m = 0 still writes n_active = 0
  return cudaGetLastError();
}

cudaError_t compact_rows(const void* src, const int64_t* dest, const int64_t* index, void* out, void* packed,
                         int64_t m, int64_t row_bytes, cudaStream_t stream) {
  if (m == 0 || row_bytes == 0) return cudaSuccess;
  // The widest unit that divides the row and every pointer's alignment.
  const uintptr_t a = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(packed) |
                      reinterpret_cast<uintptr_t>(out) | static_cast<uintptr_t>(row_bytes);
  if (a % 16 == 0) return launch_compact<uint4>(src, dest, index, out, packed, m, row_bytes, stream);
  if (a % 8 == 0) return launch_compact<uint2>(src, dest, index, out, packed, m, row_bytes, stream);
  if (a % 4 == 0) return launch_compact<uint32_t>(src, dest, index, out, packed, m, row_bytes, stream);
  if (a % 2 == 0) return launch_compact<uint16_t>(src, dest, index, out, packed, m, row_bytes, stream);
  return launch_compact<uint8_t>(src, dest, index, out, packed, m, row_bytes, stream);
}

}  // namespace cuda
}  // namespace fastadv
