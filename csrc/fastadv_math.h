// Elementwise math shared by the C++ (CPU) and CUDA kernels. Torch-free.
//
// T is the compute type: double for float64 tensors, float for float32/float16/bfloat16 (loaded as
// float32 and rounded once on store). Every function reproduces, bit for bit, the expression of
// fastadv/ops/reference.py: each + and * is rounded once (no FMA contraction: the CPU build uses
// -ffp-contract=off and the device code the explicitly rounded intrinsics), and min/max follow
// torch.minimum / torch.maximum / torch.clamp (NaN propagates). On a (+0.0, -0.0) tie these return
// the first operand, as torch's scalar loops do; torch's vectorised loops return the second, so the
// sign of a zero result is the one thing no backend can match bit for bit (not in the contract).
#pragma once

#if defined(__CUDACC__)
#define FA_HD __host__ __device__ __forceinline__
#else
#define FA_HD inline
#endif

namespace fastadv {

#if defined(__CUDA_ARCH__)
FA_HD float fmul(float a, float b) { return __fmul_rn(a, b); }  // never fused into an FMA
FA_HD double fmul(double a, double b) { return __dmul_rn(a, b); }
FA_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
FA_HD double fadd(double a, double b) { return __dadd_rn(a, b); }
FA_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
FA_HD double fsub(double a, double b) { return __dsub_rn(a, b); }
FA_HD float fdiv(float a, float b) { return __fdiv_rn(a, b); }
FA_HD double fdiv(double a, double b) { return __ddiv_rn(a, b); }
#else
template <typename T> FA_HD T fmul(T a, T b) { return a * b; }
template <typename T> FA_HD T fadd(T a, T b) { return a + b; }
template <typename T> FA_HD T fsub(T a, T b) { return a - b; }
template <typename T> FA_HD T fdiv(T a, T b) { return a / b; }
#endif

template <typename T> FA_HD T quiet_nan() {
#if defined(__CUDA_ARCH__)
  return T(__int_as_float(0x7fc00000));
#else
  return T(__builtin_nanf(""));
#endif
}

// torch.maximum(a, b) / torch.minimum(a, b): NaN wins, ties return a (see above for ±0).
template <typename T> FA_HD T max_nan(T a, T b) { return (a >= b || a != a) ? a : b; }
template <typename T> FA_HD T min_nan(T a, T b) { return (a <= b || a != a) ? a : b; }

// torch.sign: sign(±0) = 0 and sign(NaN) = 0 on both torch backends ((0 < g) - (g < 0)).
template <typename T> FA_HD T sign0(T g) { return g > T(0) ? T(1) : (g < T(0) ? T(-1) : T(0)); }

// y = clip(proj_inf(x + a*sign(g) [+ noise], xn, e)) in the reference's order. The four min/max
// run without NaN checks (ties still return the first operand) and one mask restores torch's NaN
// propagation: the result is NaN iff y or a projection bound is NaN (clip bounds are never NaN,
// the ops check); NaN payloads are not kept. This cuts the vectorised CPU loop's time by a third.
template <bool HasNoise, typename T>
FA_HD T linf_value(T x, T g, T xn, T e, T a, T noise, T lo, T hi) {
  T y = fadd(x, fmul(a, sign0(g)));
  if (HasNoise) y = fadd(y, noise);
  const T below = fsub(xn, e), above = fadd(xn, e);
  const bool nan = (y != y) | (below != below) | (above != above);
  T r = y < below ? below : y;  // max(y, below), y on a tie
  r = above < r ? above : r;    // min(r, above), r on a tie
  r = r < lo ? lo : r;
  r = hi < r ? hi : r;
  return nan ? quiet_nan<T>() : r;
}

// Random start: uniform: clip(xn + (2r - 1)*s); normal: clip(xn + r*s).
template <bool Uniform, typename T>
FA_HD T start_value(T xn, T r, T s, T lo, T hi) {
  const T delta = Uniform ? fmul(fsub(fmul(T(2), r), T(1)), s) : fmul(r, s);
  return min_nan(max_nan(fadd(xn, delta), lo), hi);
}

// Guard of the L2 step's norms (reference.L2_NORM_FLOOR, rounded to the compute type as torch does).
// The norms themselves are sqrt of a float64 sum of squares, rounded once to T (no overflow below
// 1e154 per component; the reference computes them the same way).
template <typename T> FA_HD T l2_norm_floor() { return T(1e-12); }

}  // namespace fastadv
