// CPU kernels of the native backend, registered as torch.ops.fastadv._* for the CPU (OpenMP through
// at::parallel_for; inner loops are plain loops over one row that GCC/Clang vectorise at -O3). The
// compute type is float64 for float64 tensors and float32 otherwise (fp16/bf16 are converted on load
// and rounded once on store). Bit-exact with fastadv/ops/reference.py except l2_step_'s norms (a
// float64 sum in another order, rounded once). Compiled with -ffp-contract=off: no a*b+c is fused.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "../checks.h"
#include "../fastadv_math.h"

namespace fastadv {
namespace {

// Elements per parallel task: below ~32k elements a second thread costs more than it saves.
constexpr int64_t kGrain = 32768;

// Calls f(n, j0, j1) for the pieces of rows [n, j0..j1) covering flat elements [begin, end) of an
// N x D row-major index space, so a flat parallel range can use per-row parameters.
template <typename F>
inline void for_row_pieces(int64_t begin, int64_t end, int64_t D, const F& f) {
  int64_t n = begin / D, j = begin - n * D;
  while (begin < end) {
    const int64_t stop = std::min<int64_t>(D, j + (end - begin));
    f(n, j, stop);
    begin += stop - j;
    ++n;
    j = 0;
  }
}

// float32 <-> storage conversions ("codecs"). Kernels work on the raw storage type: bfloat16 as
// uint16_t bits, converted branch-free (c10::BFloat16's conversion has a NaN branch and a struct
// wrapper that keep GCC from vectorising the loops): round to nearest even, NaN -> 0x7FC0 as c10.
struct F64 {
  using raw = double;
  using compute = double;
  static inline double ld(double v) { return v; }
  static inline double st(double f) { return f; }
};

struct F32 {
  using raw = float;
  using compute = float;
  static inline float ld(float v) { return v; }
  static inline float st(float f) { return f; }
};

struct BF16 {
  using raw = uint16_t;
  using compute = float;
  static inline float ld(uint16_t v) {
    const uint32_t u = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  }
  static inline uint16_t st(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
  }
};

// float16 as uint16_t bits, converted branch-free so the loops vectorise (c10::Half's scalar
// conversion made the fp16 step 30x slower than fp32). Both directions are exact IEEE conversions
// (round to nearest even, subnormals, Inf; NaN -> quiet NaN), the same values as c10::Half.
struct F16 {
  using raw = uint16_t;
  using compute = float;
  static inline uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, sizeof u); return u; }
  static inline float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, sizeof f); return f; }
  static inline float ld(uint16_t h) {  // c10::detail::fp16_ieee_to_fp32_value
    const uint32_t w = static_cast<uint32_t>(h) << 16, sign = w & 0x80000000u, two_w = w + w;
    const float normalized = from_bits((two_w >> 4) + (0xE0u << 23)) * from_bits(0x7800000u);  // * 2^-112
    const float denormalized = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    return from_bits(sign | (two_w < (1u << 27) ? bits(denormalized) : bits(normalized)));
  }
  static inline uint16_t st(float f) {  // F. Giesen's float_to_half_fast3_rtne, as selects
    const uint32_t u = bits(f), sign = u & 0x80000000u, a = u ^ sign;
    const uint32_t inf_nan = a > (255u << 23) ? 0x7E00u : 0x7C00u;
    // Subnormal or zero: the float adder rounds the mantissa into place.
    const float denorm_magic = from_bits(((127u - 15u) + (23u - 10u) + 1u) << 23);
    const uint32_t sub = bits(from_bits(a) + denorm_magic) - bits(denorm_magic);
    const uint32_t norm = (a + ((15u - 127u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
    const uint32_t o = a >= ((127u + 16u) << 23) ? inf_nan : (a < (113u << 23) ? sub : norm);
    return static_cast<uint16_t>(o | (sign >> 16));
  }
};

// Calls f(Codec{}) for the storage dtype of a floating tensor (float64, float32, float16, bfloat16).
template <typename F>
void dispatch_codec(at::ScalarType t, const char* name, const F& f) {
  switch (t) {
    case at::kDouble: return f(F64{});
    case at::kFloat: return f(F32{});
    case at::kBFloat16: return f(BF16{});
    case at::kHalf: return f(F16{});
    default: TORCH_CHECK(false, name, ": expected float64, float32, float16 or bfloat16, got ", t);
  }
}

template <typename C>
typename C::raw* raw_ptr(const at::Tensor& t) { return static_cast<typename C::raw*>(t.data_ptr()); }

// ----------------------------------------------------------------------------- the vector loops
// The element loops, compiled for AVX-512 (x86-64-v4), AVX2 (v3) and baseline x86-64, the widest the
// CPU has picked when the library loads (GCC's target_clones): a portable build, fast everywhere.
// (Measured on an AVX-512 Xeon, the L∞ step at 128x3x32x32 fp32: baseline alone 290 us, AVX-512 115 us.)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(FASTADV_NO_CLONES)
#define FASTADV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTADV_CLONES
#endif

// x[j] <- the L∞ step of x[j], j < len, in place through one pointer: GCC then knows x[j] is read
// before it is written (with a separate `out` pointer equal to x its runtime alias check fails and
// the scalar loop runs).
template <typename C, bool HasNoise, typename T = typename C::raw, typename A = typename C::compute>
FASTADV_CLONES void linf_span(T* x, const T* g, const T* xn, const A* noise, A e, A a, int64_t len, A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) {
    const A nz = HasNoise ? noise[j] : A(0);
    x[j] = C::st(linf_value<HasNoise>(C::ld(x[j]), C::ld(g[j]), C::ld(xn[j]), e, a, nz, lo, hi));
  }
}

// out[j] <- the L∞ step of x[j], j < len (out never overlaps the inputs).
template <typename C, bool HasNoise, typename T = typename C::raw, typename A = typename C::compute>
FASTADV_CLONES void linf_span_to(T* __restrict out, const T* x, const T* g, const T* xn, const A* noise, A e, A a,
                                 int64_t len, A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) {
    const A nz = HasNoise ? noise[j] : A(0);
    out[j] = C::st(linf_value<HasNoise>(C::ld(x[j]), C::ld(g[j]), C::ld(xn[j]), e, a, nz, lo, hi));
  }
}

// out[j] <- the random start from x_nat[j] and the noise r[j], j < len.
template <typename C, bool Uniform, typename T = typename C::raw, typename A = typename C::compute>
FASTADV_CLONES void start_span(T* __restrict out, const T* xn, const A* r, A s, int64_t len, A lo, A hi) {
  for (int64_t j = 0; j < len; ++j) out[j] = C::st(start_value<Uniform>(C::ld(xn[j]), r[j], s, lo, hi));
}

// ----------------------------------------------------------------------------- L∞ step
template <typename C, bool HasNoise, typename T = typename C::raw, typename A = typename C::compute>
void linf_rows(T* x, const T* g, const T* xn, const A* noise, const A* eps, const A* alpha, int64_t N, int64_t D,
               A lo, A hi) {
  at::parallel_for(0, N * D, kGrain, [&](int64_t begin, int64_t end) {
    for_row_pieces(begin, end, D, [&](int64_t n, int64_t j0, int64_t j1) {
      const int64_t o = n * D + j0;
      linf_span<C, HasNoise>(x + o, g + o, xn + o, HasNoise ? noise + o : nullptr, eps[n], alpha[n], j1 - j0, lo, hi);
    });
  });
}

template <typename A>
const A* opt_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<A>() : nullptr;
}

void linf_step_cpu(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                   const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min,
                   double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  const int64_t N = x.size(0), D = x.numel() / N;
  dispatch_codec(x.scalar_type(), "x", [&](auto codec) {
    using C = decltype(codec);
    using A = typename C::compute;
    const A* nz = opt_ptr<A>(noise);
    auto run = nz ? linf_rows<C, true> : linf_rows<C, false>;
    run(raw_ptr<C>(x), raw_ptr<C>(grad), raw_ptr<C>(x_nat), nz, eps.data_ptr<A>(), alpha.data_ptr<A>(), N, D,
        static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
}

// ----------------------------------------------------------------------------- L2 step
template <typename C, typename T = typename C::raw, typename A = typename C::compute>
void l2_rows(T* x, const T* g, const T* xn, const A* noise, const A* eps, const A* alpha, int64_t N, int64_t D,
             A lo, A hi) {
  // One task per row (a row is at most a few hundred KB); three passes over the row, from cache:
  // ||g||, then ||d|| with d = x + alpha*g/||g|| [+ noise] - xn, then the write. Norms: the square
  // root of a float64 sum, rounded once to A (the reference's definition).
  at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t b, int64_t e_) {
    for (int64_t n = b; n < e_; ++n) {
      const int64_t o = n * D;
      double gg = 0.0;
      for (int64_t j = 0; j < D; ++j) {
        const double v = C::ld(g[o + j]);
        gg += v * v;
      }
      const A gn = max_nan(static_cast<A>(std::sqrt(gg)), l2_norm_floor<A>());
      const A a = alpha[n];
      auto delta = [&](int64_t j) {  // y - xn, as the reference rounds it
        A y = C::ld(x[o + j]) + a * (C::ld(g[o + j]) / gn);
        if (noise) y = y + noise[o + j];
        return y - C::ld(xn[o + j]);
      };
      double dd = 0.0;
      for (int64_t j = 0; j < D; ++j) {
        const double v = delta(j);
        dd += v * v;
      }
      const A dn = max_nan(static_cast<A>(std::sqrt(dd)), l2_norm_floor<A>());
      const A factor = min_nan(eps[n] / dn, A(1));  // clamp(max=1): NaN propagates
      for (int64_t j = 0; j < D; ++j) {
        const A d = delta(j);  // recomputed (same rounding) rather than stored
        x[o + j] = C::st(min_nan(max_nan(C::ld(xn[o + j]) + d * factor, lo), hi));
      }
    }
  });
}

void l2_step_cpu(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat, const at::Tensor& eps,
                 const at::Tensor& alpha, const c10::optional<at::Tensor>& noise, double clip_min,
                 double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, noise);
  if (x.numel() == 0) return;
  const int64_t N = x.size(0);
  dispatch_codec(x.scalar_type(), "x", [&](auto codec) {
    using C = decltype(codec);
    using A = typename C::compute;
    l2_rows<C>(raw_ptr<C>(x), raw_ptr<C>(grad), raw_ptr<C>(x_nat), opt_ptr<A>(noise), eps.data_ptr<A>(),
               alpha.data_ptr<A>(), N, x.numel() / N, static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
}

// ----------------------------------------------------------------------------- DAT's FOSC step
template <typename C, typename T = typename C::raw, typename A = typename C::compute>
void fosc_rows(T* x, const T* g, const T* xn, const T* x0, const A* eps, const A* alpha, A* fosc,
               int64_t N, int64_t D, A thr, bool always, A lo, A hi) {
  // One task per row, two passes over it (the second from cache): the FOSC
  // c = eps*||g||_1 - <x - x0, g> (float64 sums of compute-dtype terms, each rounded once to A),
  // then the L-inf step of the row if it goes on (always, or c > thr).
  at::parallel_for(0, N, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t b, int64_t e_) {
    for (int64_t n = b; n < e_; ++n) {
      const int64_t o = n * D;
      double l1 = 0.0, dot = 0.0;
      for (int64_t j = 0; j < D; ++j) {
        const A gj = C::ld(g[o + j]);
        const A d = C::ld(x[o + j]) - C::ld(x0[o + j]);  // rounded to A, as the reference
        l1 += static_cast<double>(std::fabs(gj));
        dot += static_cast<double>(d) * static_cast<double>(gj);
      }
      const A l1a = static_cast<A>(l1);
      const A c = eps[n] * l1a - static_cast<A>(dot);
      fosc[n] = c;
      if (always || c > thr)
        linf_span<C, false>(x + o, g + o, xn + o, static_cast<const A*>(nullptr), eps[n], alpha[n], D, lo, hi);
    }
  });
}

at::Tensor linf_fosc_step_cpu(at::Tensor x, const at::Tensor& grad, const at::Tensor& x_nat,
                              const at::Tensor& x_start, const at::Tensor& eps, const at::Tensor& alpha,
                              double threshold, bool always, double clip_min, double clip_max) {
  check_step(x, grad, x_nat, eps, alpha, c10::nullopt);
  check_like(x_start, x, "x_start");
  const int64_t N = x.size(0);
  at::Tensor fosc = at::empty({N}, x.options().dtype(compute_type(x)));
  if (x.numel() == 0) {
    fosc.zero_();
    return fosc;
  }
  dispatch_codec(x.scalar_type(), "x", [&](auto codec) {
    using C = decltype(codec);
    using A = typename C::compute;
    fosc_rows<C>(raw_ptr<C>(x), raw_ptr<C>(grad), raw_ptr<C>(x_nat), raw_ptr<C>(x_start), eps.data_ptr<A>(),
                 alpha.data_ptr<A>(), fosc.data_ptr<A>(), N, x.numel() / N, static_cast<A>(threshold), always,
                 static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
  return fosc;
}

// ----------------------------------------------------------------------------- random start
template <typename C, bool Uniform, typename T = typename C::raw, typename A = typename C::compute>
void start_rows(T* out, const T* xn, const A* r, const A* scale, int64_t N, int64_t D, A lo, A hi) {
  at::parallel_for(0, N * D, kGrain, [&](int64_t begin, int64_t end) {
    for_row_pieces(begin, end, D, [&](int64_t n, int64_t j0, int64_t j1) {
      const int64_t o = n * D + j0;
      start_span<C, Uniform>(out + o, xn + o, r + o, scale[n], j1 - j0, lo, hi);
    });
  });
}

at::Tensor start_from_noise_cpu(const at::Tensor& x_nat, const at::Tensor& r, const at::Tensor& scale,
                                bool uniform, double clip_min, double clip_max) {
  check_row_dense(x_nat, "x_nat");
  check_like(r, x_nat, "r", /*same_dtype=*/false);
  TORCH_CHECK(r.scalar_type() == compute_type(x_nat), "r: expected ", compute_type(x_nat), ", got ", r.scalar_type());
  check_vec(scale, x_nat.size(0), compute_type(x_nat), x_nat.device(), "scale");
  at::Tensor out = at::empty_like(x_nat);  // preserve_format: a dense input keeps its strides
  if (x_nat.numel() == 0) return out;
  const int64_t N = x_nat.size(0);
  dispatch_codec(x_nat.scalar_type(), "x_nat", [&](auto codec) {
    using C = decltype(codec);
    using A = typename C::compute;
    auto run = uniform ? start_rows<C, true> : start_rows<C, false>;
    run(raw_ptr<C>(out), raw_ptr<C>(x_nat), r.data_ptr<A>(), scale.data_ptr<A>(), N, x_nat.numel() / N,
        static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
  return out;
}

// ----------------------------------------------------------------------------- early stop
// torch.argmax of one row: first index of the maximum, a NaN counting as the maximum.
template <typename T>
inline int64_t argmax_row(const T* row, int64_t C) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  A best = static_cast<A>(row[0]);
  int64_t bi = 0;
  for (int64_t c = 1; c < C && best == best; ++c) {  // stops at the first NaN
    const A v = static_cast<A>(row[c]);
    if (v > best || v != v) {
      best = v;
      bi = c;
    }
  }
  return bi;
}

at::Tensor early_stop_update_cpu(const at::Tensor& logits, const at::Tensor& y, at::Tensor budget, at::Tensor kappa) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous(), "logits: expected a contiguous [M, C] tensor, got ",
              logits.sizes());
  const int64_t M = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C > 0 || M == 0, "logits: needs at least one class");
  TORCH_CHECK(y.dim() == 1 && y.size(0) == M && y.is_contiguous() &&
              (y.scalar_type() == at::kLong || y.scalar_type() == at::kInt),
              "y: expected a contiguous int64/int32 [", M, "] tensor");
  check_vec(budget, M, at::kLong, logits.device(), "budget");
  check_vec(kappa, M, at::kLong, logits.device(), "kappa");
  at::Tensor leave = at::empty({M}, logits.options().dtype(at::kBool));
  int64_t* b = budget.data_ptr<int64_t>();
  int64_t* k = kappa.data_ptr<int64_t>();
  bool* lv = leave.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "fastadv::_early_stop_update_", [&] {
    const scalar_t* lg = logits.data_ptr<scalar_t>();
    AT_DISPATCH_INDEX_TYPES(y.scalar_type(), "fastadv::_early_stop_update_", [&] {
      const index_t* yy = y.data_ptr<index_t>();
      at::parallel_for(0, M, std::max<int64_t>(1, kGrain / std::max<int64_t>(C, 1)), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) {
          const bool wrong = argmax_row(lg + i * C, C) != static_cast<int64_t>(yy[i]);
          const bool leaves = wrong && b[i] == 0;
          lv[i] = leaves;
          b[i] -= (wrong && !leaves);
          k[i] += !wrong;
        }
      });
    });
  });
  return leave;
}

// ----------------------------------------------------------------------------- compaction
std::tuple<at::Tensor, at::Tensor> compaction_plan_cpu(const at::Tensor& leave) {
  TORCH_CHECK(leave.dim() == 1 && leave.scalar_type() == at::kBool && leave.is_contiguous(),
              "leave: expected a contiguous bool [M] tensor");
  const int64_t M = leave.size(0);
  at::Tensor dest = at::empty({M}, leave.options().dtype(at::kLong));
  const bool* lv = leave.data_ptr<bool>();
  int64_t* d = dest.data_ptr<int64_t>();
  int64_t next = 0;  // a serial scan: M is a batch size, far below what threads would pay for
  for (int64_t i = 0; i < M; ++i) d[i] = lv[i] ? -1 : next++;
  return {dest, at::scalar_tensor(next, leave.options().dtype(at::kLong))};
}

// Where row i goes: packed row dest[i] (0 <= dest < P), leavers row index[i] (dest == -1, with
// 0 <= index < R), or nowhere (dest == -1 and no `leavers`). A plan out of these bounds is not
// written: the row is skipped and the error flag raised (fastadv.ops turns it into IndexError),
// as the CUDA and Triton kernels do.
enum class Goes { kPacked, kLeavers, kNowhere, kInvalid };
inline Goes where_row_goes(int64_t i, const int64_t* d, const int64_t* ix, bool has_leavers, int64_t P, int64_t R) {
  if (d[i] >= 0) return d[i] < P ? Goes::kPacked : Goes::kInvalid;
  if (d[i] != -1) return Goes::kInvalid;
  if (!has_leavers) return Goes::kNowhere;
  return ix[i] >= 0 && ix[i] < R ? Goes::kLeavers : Goes::kInvalid;
}

inline void raise_flag(int32_t* errors) { __atomic_store_n(errors, 1, __ATOMIC_RELAXED); }

// Row i of src goes to packed[dest[i]] (dest >= 0) or to leavers[index[i]] (a leaver), as raw bytes.
void compact_rows_cpu(const at::Tensor& src, const at::Tensor& dest, const c10::optional<at::Tensor>& index,
                      c10::optional<at::Tensor> leavers, at::Tensor packed, at::Tensor errors) {
  TORCH_CHECK(src.dim() >= 1 && rows_dense(src), "src: rows must be dense blocks (contiguous or channels_last)");
  const int64_t M = src.size(0);
  check_plan(dest, index, leavers, errors, M, src.device());
  check_rows_like(packed, src, "packed");
  if (leavers.has_value()) check_rows_like(*leavers, src, "leavers");
  if (M == 0) return;
  const int64_t row_bytes = row_numel(src) * src.element_size();
  const char* s = static_cast<const char*>(src.data_ptr());
  char* pk = static_cast<char*>(packed.data_ptr());
  char* o = leavers.has_value() ? static_cast<char*>(leavers->data_ptr()) : nullptr;
  const int64_t* d = dest.data_ptr<int64_t>();
  const int64_t* ix = index.has_value() ? index->data_ptr<int64_t>() : nullptr;
  const int64_t P = packed.size(0), R = leavers.has_value() ? leavers->size(0) : 0;
  int32_t* err = errors.data_ptr<int32_t>();
  at::parallel_for(0, M, std::max<int64_t>(1, kGrain * 4 / std::max<int64_t>(row_bytes, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      switch (where_row_goes(i, d, ix, leavers.has_value(), P, R)) {
        case Goes::kPacked: std::memcpy(pk + d[i] * row_bytes, s + i * row_bytes, row_bytes); break;
        case Goes::kLeavers: std::memcpy(o + ix[i] * row_bytes, s + i * row_bytes, row_bytes); break;
        case Goes::kNowhere: break;
        case Goes::kInvalid: raise_flag(err); break;
      }
    }
  });
}

// ----------------------------------------------------------------------------- fused step + compaction
template <typename C, bool HasNoise, typename T = typename C::raw, typename A = typename C::compute>
void linf_compact_rows(const T* x, const T* g, const T* xn, const A* noise, const A* eps, const A* alpha,
                       const int64_t* dest, const int64_t* index, T* leavers, T* x_next, T* xn_next, int32_t* err,
                       int64_t N, int64_t D, int64_t P, int64_t R, A lo, A hi) {
  at::parallel_for(0, N * D, kGrain, [&](int64_t begin, int64_t end) {
    for_row_pieces(begin, end, D, [&](int64_t n, int64_t j0, int64_t j1) {
      const int64_t o = n * D, dn = dest[n];
      const Goes goes = where_row_goes(n, dest, index, true, P, R);
      if (goes == Goes::kInvalid) {
        raise_flag(err);
        return;
      }
      if (goes == Goes::kLeavers) {  // a leaver keeps the iterate at which it left
        std::memcpy(leavers + index[n] * D + j0, x + o + j0, (j1 - j0) * sizeof(T));
        return;
      }
      const int64_t p = o + j0;
      linf_span_to<C, HasNoise>(x_next + dn * D + j0, x + p, g + p, xn + p, HasNoise ? noise + p : nullptr, eps[n],
                                alpha[n], j1 - j0, lo, hi);
      std::memcpy(xn_next + dn * D + j0, xn + o + j0, (j1 - j0) * sizeof(T));
    });
  });
}

void linf_step_compact_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& x_nat,
                           const at::Tensor& eps, const at::Tensor& alpha, const c10::optional<at::Tensor>& noise,
                           const at::Tensor& dest, const at::Tensor& index, at::Tensor leavers, at::Tensor x_next,
                           at::Tensor x_nat_next, at::Tensor errors, double clip_min, double clip_max) {
  check_step_compact(x, grad, x_nat, eps, alpha, noise, dest, index, leavers, x_next, x_nat_next, errors);
  const int64_t M = x.size(0);
  if (x.numel() == 0) return;
  const int64_t* d = dest.data_ptr<int64_t>();
  const int64_t* ix = index.data_ptr<int64_t>();
  dispatch_codec(x.scalar_type(), "x", [&](auto codec) {
    using C = decltype(codec);
    using A = typename C::compute;
    const A* nz = opt_ptr<A>(noise);
    auto run = nz ? linf_compact_rows<C, true> : linf_compact_rows<C, false>;
    run(raw_ptr<C>(x), raw_ptr<C>(grad), raw_ptr<C>(x_nat), nz, eps.data_ptr<A>(), alpha.data_ptr<A>(), d, ix,
        raw_ptr<C>(leavers), raw_ptr<C>(x_next), raw_ptr<C>(x_nat_next), errors.data_ptr<int32_t>(), M, x.numel() / M,
        x_next.size(0), leavers.size(0), static_cast<A>(clip_min), static_cast<A>(clip_max));
  });
}

}  // namespace
}  // namespace fastadv

TORCH_LIBRARY_IMPL(fastadv, CPU, m) {
  m.impl("_linf_step_", &fastadv::linf_step_cpu);
  m.impl("_l2_step_", &fastadv::l2_step_cpu);
  m.impl("_start_from_noise", &fastadv::start_from_noise_cpu);
  m.impl("_early_stop_update_", &fastadv::early_stop_update_cpu);
  m.impl("_compaction_plan", &fastadv::compaction_plan_cpu);
  m.impl("_compact_rows", &fastadv::compact_rows_cpu);
  m.impl("_linf_step_compact", &fastadv::linf_step_compact_cpu);
  m.impl("_linf_fosc_step_", &fastadv::linf_fosc_step_cpu);
}
