// Fused CPU kernels for Gumbel noise, Gumbel-max and Gumbel-softmax (discograd.kernels).
//
// Noise. Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// keyed by a 64-bit seed drawn from a torch.Generator. Element f = row * K + column of the
// (rows, K) input draws from the 64-bit counter
//     ctr = 16 * (f / 64) + f % 16,  word (f % 64) / 16                       (float32),
//     ctr = 16 * (f / 32) + f % 16,  words 2h and 2h + 1, h = (f % 32) / 16   (float64),
// so 16 consecutive counters fill a chunk of 64 (32) consecutive elements with no waste,
// whatever the row length. The noise of an element depends only on (seed, f): it is the same
// whatever the thread count, and the Triton kernel draws the same words.
//
// A 24-bit (53-bit) word j gives the uniform at the midpoint of its grid cell,
// u = (2j + 1) / 2^25 (2^54), never 0 or 1. E = -log u ~ Exp(1) is computed from u when
// u < 1/2 and as -log1p(-(1 - u)) otherwise (1 - u is exact there), so small E keep full
// precision; then G = -log E. This is the transform of discograd.ops.standard_exponential, so
// the noise is finite for every draw: G lies in [-log(25 log 2), 25 log 2] = [-2.85, 17.33]
// in float32 ([-3.6, 37.4] in float64). log and exp are our own branch-free polynomials
// (about 1 ulp), which vectorize.
//
// Gumbel-softmax of one row (K entries, all in cache): z = x + G (written to the output),
// m = max z, y = exp((z - m) / tau) / sum, optionally the exact one-hot of the first arg max z.
// Large logits: once ulp(x) is not small next to G, x + G rounds the noise away (float32 rows
// of 1e6 drew index 0 2.5% too often, of 1e8 95% of the time). arg max and softmax of x + G
// are invariant to subtracting a constant from the row, so a row whose |m| reaches 2^10
// (float32; 2^39 in float64) is redone from the same noise as z = (x - m) + G: the entries
// that can win lie within about 20 of m, where x - m is exact (Sterbenz), so their noise
// keeps full precision. Below the threshold the rounding of x + G is at most 2^-14, the same
// absolute resolution in both dtypes (as torch's own op), and nothing changes.
// Backward from the saved y only: grad_x = y (g - <g, y>) / tau, and, with s = z / tau,
// grad_tau = -(1/tau) sum_i y_i (g_i - <g, y>) log y_i (softmax is shift invariant, so log y
// stands in for s).
//
// SIMD: the row loops are plain C++ over fixed 16-lane chunks, written so that GCC vectorizes
// them (Philox's 32x32->64 products use intrinsics); they are compiled three times (AVX-512,
// AVX2+FMA, baseline x86-64; a generic build elsewhere) and the variant is picked at load time
// from the CPU's features. No -march flag is used. With FMA contraction the variants may
// differ in the last bit of a sample; on one machine the output is a function of the seed.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#define DG_INLINE inline __attribute__((always_inline))

namespace discograd_kernels {
namespace {

constexpr int kLanes = 16;        // Philox calls per chunk, and accumulator lanes
constexpr int kChunk32 = 64;      // float32 columns per chunk (4 words per call)
constexpr int kChunk64 = 32;      // float64 columns per chunk (2 words per value)

template <typename T>
DG_INLINE T bit_cast_to(const void* p) {
  T out;
  std::memcpy(&out, p, sizeof(T));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Philox-4x32-10 on 16 lanes. The 32x32->64 products use vpmuludq through intrinsics on x86
// (compilers turn the portable form into slow 64-bit multiplies); `Isa` picks the variant.
// The ISA-specific mulhilo are plain `inline` (GCC cannot force-inline target code into the
// generic templates; it inlines them once those land in a function of the same target), and
// take vectors by reference, since passing 64-byte vectors by value between functions of
// different targets has different ABIs.

typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint64_t u64x8 __attribute__((vector_size(64)));

template <typename V, typename N>
DG_INLINE N as_native(const V& v) {
  static_assert(sizeof(V) == sizeof(N), "size mismatch");
  N n;
  std::memcpy(&n, &v, sizeof(N));
  return n;
}

struct IsaGeneric {
  using V = u32x16;
  static constexpr bool kMaskedTail = false;  // see IsaAvx512::load_tail
  static constexpr bool kMaskedRowTail = false;
  // hi:lo = a * m per 32-bit lane, from even/odd 64-bit products.
  DG_INLINE static void mulhilo(const V& a, uint32_t m, V& hi, V& lo) {
    const u64x8 a64 = as_native<V, u64x8>(a);
    const u64x8 pe = (a64 & 0xffffffffull) * static_cast<uint64_t>(m);
    const u64x8 po = (a64 >> 32) * static_cast<uint64_t>(m);
    lo = as_native<u64x8, V>((pe & 0xffffffffull) | (po << 32));
    hi = as_native<u64x8, V>((pe >> 32) | (po & 0xffffffff00000000ull));
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
#define DG_X86_SIMD 1
#define DG_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DG_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,prefer-vector-width=512")))

struct IsaSse2 {
  using V = u32x4;
  static constexpr bool kMaskedTail = false;
  static constexpr bool kMaskedRowTail = false;
  static inline void mulhilo(const V& a, uint32_t m, V& hi, V& lo) {
    const __m128i mv = _mm_set1_epi64x(m);
    const __m128i low = _mm_set1_epi64x(0xffffffffll);
    const __m128i in = as_native<V, __m128i>(a);
    const __m128i pe = _mm_mul_epu32(in, mv);
    const __m128i po = _mm_mul_epu32(_mm_srli_epi64(in, 32), mv);
    lo = as_native<__m128i, V>(_mm_or_si128(_mm_and_si128(pe, low), _mm_slli_epi64(po, 32)));
    hi = as_native<__m128i, V>(_mm_or_si128(_mm_srli_epi64(pe, 32), _mm_andnot_si128(low, po)));
  }
};

struct IsaAvx2 {
  using V = u32x8;
  // As IsaAvx512::load_tail / store_tail, with vmaskmov (masked-off lanes are not accessed).
  // Used for rows of at most 16 (forward of (7680, 10) float32 0.75 -> 0.49 ms on an AVX-512
  // machine capped to AVX2), not for the tails of longer rows, where it gained nothing there
  // and vmaskmov stores are slow on some AMD cores.
  static constexpr bool kMaskedTail = true;
  static constexpr bool kMaskedRowTail = false;
  typedef float f32x16 __attribute__((vector_size(64)));
  typedef double f64x16 __attribute__((vector_size(128)));
  DG_TARGET_AVX2 static inline __m256i lanes_below(int64_t n) {  // lane i: all ones iff i < n
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  DG_TARGET_AVX2 static inline __m256i pairs_below(int64_t n) {  // 64-bit lane i: i < n
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  DG_TARGET_AVX2 static inline void load_tail(const float* p, int64_t n, float fill,
                                              f32x16& out) {
    __m256 h[2];
    for (int i = 0; i < 2; ++i) {
      const __m256i k = lanes_below(n - 8 * i);
      h[i] = _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p + 8 * i, k),
                              _mm256_castsi256_ps(k));
    }
    std::memcpy(&out, h, sizeof(out));
  }
  DG_TARGET_AVX2 static inline void store_tail(float* p, int64_t n, const f32x16& v) {
    __m256 h[2];
    std::memcpy(h, &v, sizeof(h));
    for (int i = 0; i < 2; ++i) _mm256_maskstore_ps(p + 8 * i, lanes_below(n - 8 * i), h[i]);
  }
  DG_TARGET_AVX2 static inline void load_tail(const double* p, int64_t n, double fill,
                                              f64x16& out) {
    __m256d h[4];
    for (int i = 0; i < 4; ++i) {
      const __m256i k = pairs_below(n - 4 * i);
      h[i] = _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p + 4 * i, k),
                              _mm256_castsi256_pd(k));
    }
    std::memcpy(&out, h, sizeof(out));
  }
  DG_TARGET_AVX2 static inline void store_tail(double* p, int64_t n, const f64x16& v) {
    __m256d h[4];
    std::memcpy(h, &v, sizeof(h));
    for (int i = 0; i < 4; ++i) _mm256_maskstore_pd(p + 4 * i, pairs_below(n - 4 * i), h[i]);
  }
  DG_TARGET_AVX2 static inline void mulhilo(const V& a, uint32_t m, V& hi, V& lo) {
    const __m256i mv = _mm256_set1_epi64x(m);
    const __m256i in = as_native<V, __m256i>(a);
    const __m256i pe = _mm256_mul_epu32(in, mv);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(in, 32), mv);
    lo = as_native<__m256i, V>(_mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA));
    hi = as_native<__m256i, V>(_mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA));
  }
};

struct IsaAvx512 {
  using V = u32x16;
  DG_TARGET_AVX512 static inline void mulhilo(const V& a, uint32_t m, V& hi, V& lo) {
    const __m512i mv = _mm512_set1_epi64(m);
    const __m512i in = as_native<V, __m512i>(a);
    const __m512i pe = _mm512_mul_epu32(in, mv);
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(in, 32), mv);
    lo = as_native<__m512i, V>(_mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32)));
    hi = as_native<__m512i, V>(_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po));
  }
  // The first n (<= 16) entries of p as 16 lanes, the others `fill`; and the store of the
  // first n lanes. Lane masks touch no memory past p + n, and keep short rows in registers.
  // kMaskedTail: rows of at most 16 entries; kMaskedRowTail: the last part of longer rows.
  static constexpr bool kMaskedTail = true;
  static constexpr bool kMaskedRowTail = true;
  typedef float f32x16 __attribute__((vector_size(64)));
  typedef double f64x16 __attribute__((vector_size(128)));
  DG_TARGET_AVX512 static inline void load_tail(const float* p, int64_t n, float fill,
                                                f32x16& out) {
    const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
    out = as_native<__m512, f32x16>(_mm512_mask_loadu_ps(_mm512_set1_ps(fill), k, p));
  }
  DG_TARGET_AVX512 static inline void store_tail(float* p, int64_t n, const f32x16& v) {
    const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
    _mm512_mask_storeu_ps(p, k, as_native<f32x16, __m512>(v));
  }
  DG_TARGET_AVX512 static inline void load_tail(const double* p, int64_t n, double fill,
                                                f64x16& out) {
    const unsigned k = (1u << n) - 1u;
    __m512d h[2];
    for (int i = 0; i < 2; ++i)
      h[i] = _mm512_mask_loadu_pd(_mm512_set1_pd(fill), static_cast<__mmask8>(k >> (8 * i)),
                                  p + 8 * i);
    std::memcpy(&out, h, sizeof(out));
  }
  DG_TARGET_AVX512 static inline void store_tail(double* p, int64_t n, const f64x16& v) {
    const unsigned k = (1u << n) - 1u;
    __m512d h[2];
    std::memcpy(h, &v, sizeof(h));
    for (int i = 0; i < 2; ++i)
      _mm512_mask_storeu_pd(p + 8 * i, static_cast<__mmask8>(k >> (8 * i)), h[i]);
  }
};
#endif

// Words for the counters ctr, ctr + 1, ..., ctr + 16 * kChunks - 1: w[l][i] is word l of
// counter ctr + i. Philox is ten dependent rounds of multiplies, so one vector at a time
// leaves the core waiting on latency; the counters therefore run as `kVectors` independent
// vectors of the ISA's native width, interleaved round by round (measured on AVX-512: 1.7x
// faster than one vector at a time).
template <typename Isa>
struct Philox {
  using V = typename Isa::V;
  static constexpr int kWidth = static_cast<int>(sizeof(V) / sizeof(uint32_t));
  static constexpr int kVectors = 4;                       // 4 x 4 state vectors in registers
  static constexpr int kChunks = kVectors * kWidth / kLanes;  // 16-counter chunks per call
  static constexpr int kOneChunk = kLanes / kWidth;          // vectors for a single chunk

  template <int M>
  DG_INLINE static void run(uint64_t ctr, uint32_t k0, uint32_t k1, uint32_t (*w)[M * kWidth]) {
    V c0[M], c1[M], c2[M], c3[M];
    for (int j = 0; j < M; ++j) {
      c2[j] = V{};
      c3[j] = V{};
      for (int i = 0; i < kWidth; ++i) {
        const uint64_t c = ctr + static_cast<uint64_t>(j * kWidth + i);
        c0[j][i] = static_cast<uint32_t>(c);
        c1[j][i] = static_cast<uint32_t>(c >> 32);
      }
    }
    uint32_t a = k0, b = k1;
    for (int r = 0; r < 10; ++r) {
      for (int j = 0; j < M; ++j) {
        V h0, l0, h1, l1;
        Isa::mulhilo(c0[j], 0xD2511F53u, h0, l0);
        Isa::mulhilo(c2[j], 0xCD9E8D57u, h1, l1);
        c0[j] = h1 ^ c1[j] ^ a;
        c1[j] = l1;
        c2[j] = h0 ^ c3[j] ^ b;
        c3[j] = l0;
      }
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    for (int j = 0; j < M; ++j) {
      std::memcpy(w[0] + j * kWidth, &c0[j], sizeof(V));
      std::memcpy(w[1] + j * kWidth, &c1[j], sizeof(V));
      std::memcpy(w[2] + j * kWidth, &c2[j], sizeof(V));
      std::memcpy(w[3] + j * kWidth, &c3[j], sizeof(V));
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Branch-free log and exp that vectorize. Inputs of log are positive normal numbers.

// x = 2^e m with m in [2/3, 4/3), log x = e log 2 + log1p(f), f = m - 1 (exact), and
// log1p(f) = f + f^2 Q(f) with Q a degree-8 polynomial fitted for relative error on |f| <= 1/3
// (the Triton kernel's log: within 1 ulp on every input the noise transform gives it). e and
// m come from one integer subtraction of the bits of 2/3.
DG_INLINE float log_f32(float x) {
  const int32_t i = bit_cast_to<int32_t>(&x) - 0x3F2AAAAB;
  const int32_t e = i >> 23;
  const int32_t im = (i & 0x7FFFFF) + 0x3F2AAAAB;
  const float f = bit_cast_to<float>(&im) - 1.0f;
  float q = -0.10902266949415207f * f + 0.1387483775615692f;
  q = q * f - 0.12657690048217773f;
  q = q * f + 0.14026455581188202f;
  q = q * f - 0.166432723402977f;
  q = q * f + 0.20009292662143707f;
  q = q * f - 0.25000864267349243f;
  q = q * f + 0.3333323001861572f;
  q = q * f - 0.49999991059303284f;
  return static_cast<float>(e) * 0.693147182464599609375f + ((f * f) * q + f);
}

// log(1 + f) = f - (f^2/2 - s (f^2/2 + R)), s = f / (2 + f), R = sum_k 2 s^(2k) / (2k + 1).
DG_INLINE double log_f64(double x) {
  const int64_t ix = bit_cast_to<int64_t>(&x);
  const int64_t e = (ix - 0x3fe6a09e667f3bceLL) >> 52;  // as in log_f32
  const int64_t im = ix - (e << 52);
  const double m = bit_cast_to<double>(&im);
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double z = s * s;
  double r = 2.0 / 23.0;
  r = r * z + 2.0 / 21.0;
  r = r * z + 2.0 / 19.0;
  r = r * z + 2.0 / 17.0;
  r = r * z + 2.0 / 15.0;
  r = r * z + 2.0 / 13.0;
  r = r * z + 2.0 / 11.0;
  r = r * z + 2.0 / 9.0;
  r = r * z + 2.0 / 7.0;
  r = r * z + 2.0 / 5.0;
  r = r * z + 2.0 / 3.0;
  r *= z;
  const double hfsq = 0.5 * f * f;
  const double de = static_cast<double>(e);
  const double lo = de * 1.9082149292705877e-10 - (hfsq - s * (hfsq + r));
  return (de * 6.9314718036912382e-01 + f) + lo;  // ln 2 = hi + lo, hi with 32 bits
}

// exp for x <= 0 (and -inf): 2^n e^r, |r| <= log(2)/2, Taylor polynomial to degree 8.
// Results below the smallest normal float are flushed to 0 (a softmax weight under 1e-38);
// NaN stays NaN.
DG_INLINE float exp_f32(float x) {
  const bool tiny = x < -87.3f;
  x = tiny ? -87.3f : x;
  // Round to nearest by the 1.5 * 2^23 trick (vectorizes everywhere, unlike nearbyint).
  const float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.0f / 40320.0f;
  p = p * r + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  const float scale = bit_cast_to<float>(&bits);
  return tiny ? 0.0f : p * scale;
}

DG_INLINE double exp_f64(double x) {
  const bool tiny = x < -708.0;
  x = tiny ? -708.0 : x;
  const double n = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  double r = x - n * 6.9314718036912382e-01;
  r = r - n * 1.9082149292705877e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  const double scale = bit_cast_to<double>(&bits);
  return tiny ? 0.0 : p * scale;
}

// ---------------------------------------------------------------------------------------------
// Gumbel noise from random words (see the header comment for the transform).

DG_INLINE float gumbel_f32(uint32_t word) {
  const int32_t j = static_cast<int32_t>(word >> 8);  // 24 bits: u = (2j + 1) / 2^25
  const bool low = j < (1 << 23);
  // u (low) or t = 1 - u (high): an odd integer below 2^24 over 2^25, exact in float32.
  const int32_t v = low ? 2 * j + 1 : (1 << 25) - 2 * j - 1;
  const float a = static_cast<float>(v) * 2.98023223876953125e-8f;  // 2^-25
  const float w = 1.0f - a;                                          // rounded 1 - t
  const float err = (1.0f - w) - a;                                  // exact: 1 - t = w + err
  const float lg = log_f32(low ? a : w);
  // -log(1 - t) = -log(w) - log1p(err / w), and err / w = err (2 - w) (1 + O(t^2)): the
  // product differs from the quotient by at most err t^2 <= 2^-26 E, under an ulp of E.
  const float e = low ? -lg : -(lg + err * (2.0f - w));
  return -log_f32(e);
}

DG_INLINE double gumbel_f64(uint64_t word) {
  const int64_t j = static_cast<int64_t>(word >> 11);  // 53 bits: u = (2j + 1) / 2^54
  const bool low = j < (int64_t(1) << 52);
  const int64_t v = low ? 2 * j + 1 : (int64_t(1) << 54) - 2 * j - 1;
  const double a = static_cast<double>(v) * 5.5511151231257827e-17;  // 2^-54
  const double w = 1.0 - a;
  const double err = (1.0 - w) - a;
  const double lg = log_f64(low ? a : w);
  const double e = low ? -lg : -(lg + err * (2.0 - w));  // as in gumbel_f32
  return -log_f64(e);
}

// The noise of chunks of columns from their Philox words: chunk j of a call takes lanes
// [16 j, 16 j + 16) of the four words (see the header comment for the element order).
template <typename acc_t>
struct NoiseChunk;

template <>
struct NoiseChunk<float> {
  static constexpr int kWidth = kChunk32;
  template <int N>
  DG_INLINE static void from_words(const uint32_t (*w)[N], int j, float* g) {
    for (int l = 0; l < 4; ++l)
      for (int i = 0; i < kLanes; ++i) g[l * kLanes + i] = gumbel_f32(w[l][j * kLanes + i]);
  }
};

template <>
struct NoiseChunk<double> {
  static constexpr int kWidth = kChunk64;
  template <int N>
  DG_INLINE static void from_words(const uint32_t (*w)[N], int j, double* g) {
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < kLanes; ++i) {
        const uint64_t word = (static_cast<uint64_t>(w[2 * h][j * kLanes + i]) << 32) |
                              w[2 * h + 1][j * kLanes + i];
        g[h * kLanes + i] = gumbel_f64(word);
      }
  }
};

template <typename scalar_t, typename acc_t>
DG_INLINE acc_t load(const scalar_t* p) {
  return static_cast<acc_t>(*p);
}

// Per-call parameters shared by the row kernels.
struct Seed {
  uint32_t k0, k1;
};

// Noise of the one chunk b, clipped to the flat elements [f0, f1), into out[0, f1 - f0).
template <typename Isa, typename acc_t>
DG_INLINE void fill_chunk(uint64_t b, uint64_t f0, uint64_t f1, acc_t* out, Seed seed) {
  using P = Philox<Isa>;
  constexpr uint64_t W = NoiseChunk<acc_t>::kWidth;
  uint32_t w[4][P::kOneChunk * P::kWidth];
  acc_t tmp[W];
  const uint64_t start = b * W;
  const uint64_t lo = start > f0 ? start : f0;
  const uint64_t hi = start + W < f1 ? start + W : f1;
  P::template run<P::kOneChunk>(b * kLanes, seed.k0, seed.k1, w);
  NoiseChunk<acc_t>::from_words(w, 0, tmp);
  std::memcpy(out + (lo - f0), tmp + (lo - start), (hi - lo) * sizeof(acc_t));
}

struct NoPrefetch {
  DG_INLINE void operator()(uint64_t, uint64_t) const {}
};

// Noise of the flat elements [f0, f1) into out[0, f1 - f0): whole batches of chunks straight
// to the output, the partial chunks at either end through a buffer. `prefetch(lo, hi)` is
// called once per batch with the batch's elements, so callers can spread the prefetches of
// what they will read next over the (compute-bound) noise generation.
template <typename Isa, typename acc_t, typename Prefetch = NoPrefetch>
DG_INLINE void fill_noise(uint64_t f0, uint64_t f1, acc_t* out, Seed seed,
                          const Prefetch& prefetch = Prefetch()) {
  using P = Philox<Isa>;
  constexpr uint64_t W = NoiseChunk<acc_t>::kWidth;
  constexpr int C = P::kChunks;
  uint32_t w[4][P::kVectors * P::kWidth];
  if (f1 <= f0) return;
  uint64_t b = f0 / W;
  if (b * W < f0) {
    prefetch(f0, (b + 1) * W < f1 ? (b + 1) * W : f1);
    fill_chunk<Isa, acc_t>(b++, f0, f1, out, seed);
  }
  for (; (b + C) * W <= f1; b += C) {
    prefetch(b * W, (b + C) * W);
    P::template run<P::kVectors>(b * kLanes, seed.k0, seed.k1, w);
    for (int j = 0; j < C; ++j) NoiseChunk<acc_t>::from_words(w, j, out + ((b + j) * W - f0));
  }
  if (b * W < f1) prefetch(b * W, f1);
  for (; b * W < f1; ++b) fill_chunk<Isa, acc_t>(b, f0, f1, out, seed);
}

// Cache lines of the bytes [p, p + bytes) on their way to L1 (for reading, or for writing).
// On x86 through asm: GCC -O3 deleted a loop of __builtin_prefetch as a loop without effect
// (-ffinite-loops). prefetchw is a no-op hint on CPUs without it.
template <bool kWrite>
DG_INLINE void prefetch_bytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const uintptr_t first = reinterpret_cast<uintptr_t>(c) & ~uintptr_t(63);
  for (uintptr_t a = first; a < reinterpret_cast<uintptr_t>(c + bytes); a += 64) {
    const char* line = reinterpret_cast<const char*>(a);
#ifdef DG_X86_SIMD
    if constexpr (kWrite) {
      asm volatile("prefetchw %0" : : "m"(*line));
    } else {
      asm volatile("prefetcht0 %0" : : "m"(*line));
    }
#else
    __builtin_prefetch(line, kWrite ? 1 : 0, 3);
#endif
  }
}

// Rows are processed in groups of about this many elements, whose noise is drawn in one go
// (short rows would otherwise each draw a whole chunk).
constexpr int64_t kGroupElems = 4096;

DG_INLINE int64_t group_rows(int64_t cols) {
  const int64_t g = kGroupElems / (cols > 0 ? cols : 1);
  return g < 1 ? 1 : g;
}

// ---------------------------------------------------------------------------------------------
// Row kernels. `buf` is a float/double row of K entries (the output itself when the output
// dtype is the compute dtype). Reductions keep 16 partial results in a vector (the compilers
// do not vectorize floating-point reductions by themselves without -ffast-math).

template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec16<double> {
  typedef double type __attribute__((vector_size(128)));
};
template <typename T>
using vec16 = typename Vec16<T>::type;

template <typename T>
DG_INLINE vec16<T> vload(const T* p) {
  vec16<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
DG_INLINE vec16<T> vsplat(T x) {
  vec16<T> v;
  for (int l = 0; l < kLanes; ++l) v[l] = x;
  return v;
}

// Vector code in these generic helpers must stay in the simplest forms (`a > b ? a : b`,
// `+=`): GCC lowers some others (or-ed lane masks) to scalar code before they are inlined
// into the ISA-specific functions, which made a max reduction 20x slower.
template <typename T>
DG_INLINE T hmax(const vec16<T>& v) {
  T m = v[0];
  for (int l = 1; l < kLanes; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

template <typename T>
DG_INLINE T hsum(const vec16<T>& v) {
  T s = 0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// Pairwise sum and max of the 16 lanes: halves added lane-wise, four levels deep, instead of
// a chain of 15 dependent scalar operations (the short rows' bottleneck once they stayed in
// registers). The sum is in a different order from hsum's.
template <typename T, int N>
struct VecN {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};

template <typename T, int N, bool kMax>
DG_INLINE T tree_reduce(const typename VecN<T, N>::type& v) {
  if constexpr (N == 2) {
    return kMax ? (v[1] > v[0] ? v[1] : v[0]) : v[0] + v[1];
  } else {
    typename VecN<T, N / 2>::type lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    if constexpr (kMax) {
      return tree_reduce<T, N / 2, kMax>(hi > lo ? hi : lo);
    } else {
      return tree_reduce<T, N / 2, kMax>(lo + hi);
    }
  }
}

template <typename T>
DG_INLINE T tree_sum(const vec16<T>& v) {
  return tree_reduce<T, kLanes, false>(v);
}

template <typename T>
DG_INLINE T tree_max(const vec16<T>& v) {
  return tree_reduce<T, kLanes, true>(v);
}

template <typename acc_t>
DG_INLINE acc_t exp_acc(acc_t x) {
  if constexpr (sizeof(acc_t) == 4) {
    return exp_f32(x);
  } else {
    return exp_f64(x);
  }
}

template <typename acc_t>
DG_INLINE acc_t log_acc(acc_t x) {
  if constexpr (sizeof(acc_t) == 4) {
    return log_f32(x);
  } else {
    return log_f64(x);
  }
}

// Lanes whose sum is NaN exactly when some lane of v is NaN or +inf: f - f is 0 for finite f
// (and for -inf lanes, replaced by 0 first), NaN otherwise. `!=`, not `>`: NaN > -inf is false,
// which replaced NaN lanes by 0 too, and the arg max skipped NaN logits.
template <typename acc_t>
DG_INLINE vec16<acc_t> nan_lanes(const vec16<acc_t>& v) {
  const vec16<acc_t> f = v != -std::numeric_limits<acc_t>::infinity() ? v : vsplat<acc_t>(0);
  return f - f;
}

// The first index of z[0, cols) equal to its max m; when nan_check (a sum of nan_lanes) is
// NaN, the first NaN instead, as torch's arg max; 0 when there is none (a +inf entry).
template <typename acc_t>
DG_INLINE int64_t first_max_index(const acc_t* z, int64_t cols, acc_t m, acc_t nan_check) {
  int64_t idx = 0;
  if (nan_check == nan_check) {
    while (idx < cols && !(z[idx] == m)) ++idx;
  } else {
    while (idx < cols && z[idx] == z[idx]) ++idx;
  }
  return idx < cols ? idx : 0;
}

// Rows whose perturbed max m has |m| >= this are redone shifted by m (see the header comment):
// the rounding of x + G is then at most ulp(2^10) / 2 = 2^-14 in float32, as ulp(2^39) / 2 in
// float64.
template <typename acc_t>
constexpr acc_t kShiftFrom = sizeof(acc_t) == 4 ? acc_t(1024) : acc_t(549755813888.0);  // 2^39

// Whether a row with perturbed max m is redone shifted: |m| large and finite (a +inf or all
// -inf row keeps its unshifted values, which the fused check flags; NaN compares false).
// One unsigned compare of the bits of |m|: [bits(T), bits(inf)) is the finite range at or
// above T, and NaN lies above it.
template <typename acc_t>
DG_INLINE bool needs_shift(acc_t m) {
  using U = typename std::conditional<sizeof(acc_t) == 4, uint32_t, uint64_t>::type;
  constexpr U kAbs = std::numeric_limits<U>::max() >> 1;
  const acc_t from = kShiftFrom<acc_t>, inf = std::numeric_limits<acc_t>::infinity();
  const U lo = bit_cast_to<U>(&from), hi = bit_cast_to<U>(&inf);
  return (bit_cast_to<U>(&m) & kAbs) - lo < hi - lo;
}

template <typename acc_t>
struct Perturbed {
  acc_t max;        // max z
  acc_t nan_check;  // the sum of nan_lanes of z (when asked for; 0 otherwise)
};

// z = (x - shift) + G into buf (G: the row's noise; no subtraction unless kShift). The results
// come back by value: through a pointer GCC kept the sum in memory (arg max of (7680, 10) rows
// 3% slower).
template <typename Isa, typename scalar_t, typename acc_t, bool kShift>
DG_INLINE Perturbed<acc_t> perturb_pass(const scalar_t* x, const acc_t* noise, acc_t* buf,
                                        int64_t cols, acc_t shift, bool want_nan) {
  constexpr int W = kLanes;
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  vec16<acc_t> vmax = vsplat<acc_t>(neg_inf);
  vec16<acc_t> vnan = vsplat<acc_t>(0);  // becomes NaN iff some z is NaN (+inf is excluded)
  acc_t z[W];
  for (int64_t c0 = 0; c0 < cols; c0 += W) {
    if (c0 + W <= cols) {
      vec16<acc_t> v;
      if constexpr (std::is_same<scalar_t, acc_t>::value) {
        // Whole vectors: filling z element by element and reading it back as one vector
        // stalls on store forwarding (measured 5x slower).
        v = vload(x + c0);
      } else {
        for (int k = 0; k < W; ++k) z[k] = load<scalar_t, acc_t>(x + c0 + k);
        v = vload(z);
      }
      if constexpr (kShift) v = v - vsplat<acc_t>(shift);
      v = v + vload(noise + c0);
      std::memcpy(buf + c0, &v, sizeof(v));
      vmax = v > vmax ? v : vmax;
      if (want_nan) vnan += nan_lanes<acc_t>(v);
      continue;
    }
    // The tail: with lane masks it stays in a register (-inf past the row); otherwise it goes
    // through z, whose read as a vector after element-wise writes stalls on store forwarding.
    const int64_t n = cols - c0;
    vec16<acc_t> v;
    if constexpr (Isa::kMaskedRowTail && std::is_same<scalar_t, acc_t>::value) {
      vec16<acc_t> vx, vn;
      Isa::load_tail(x + c0, n, neg_inf, vx);
      Isa::load_tail(noise + c0, n, acc_t(0), vn);
      if constexpr (kShift) vx = vx - vsplat<acc_t>(shift);  // -inf past the row stays -inf
      v = vx + vn;
      Isa::store_tail(buf + c0, n, v);
    } else {
      for (int64_t k = 0; k < n; ++k) {
        acc_t xk = load<scalar_t, acc_t>(x + c0 + k);
        if constexpr (kShift) xk = xk - shift;
        z[k] = xk + noise[c0 + k];
      }
      std::memcpy(buf + c0, z, n * sizeof(acc_t));
      for (int64_t k = n; k < W; ++k) z[k] = neg_inf;
      v = vload(z);
    }
    vmax = v > vmax ? v : vmax;
    if (want_nan) vnan += nan_lanes<acc_t>(v);
  }
  const acc_t m = hmax<acc_t>(vmax);
  return {m, want_nan ? hsum<acc_t>(vnan) : acc_t(0)};
}

// z = x + G into buf, or z = (x - c) + G for a row whose max c of x + G is large (see
// needs_shift); returns max z, and the first index attaining it in *argmax.
template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE acc_t perturb_row(const scalar_t* x, const acc_t* noise, acc_t* buf, int64_t cols,
                            int64_t* argmax) {
  const bool want_nan = argmax != nullptr;
  Perturbed<acc_t> p =
      perturb_pass<Isa, scalar_t, acc_t, false>(x, noise, buf, cols, acc_t(0), want_nan);
  if (__builtin_expect(needs_shift<acc_t>(p.max), 0))
    p = perturb_pass<Isa, scalar_t, acc_t, true>(x, noise, buf, cols, p.max, want_nan);
  // NaN logits pass only with validation off; then, as in torch, the softmax is NaN (the NaN
  // reaches the sum of exponentials) and the arg max is the first NaN.
  if (argmax != nullptr) *argmax = first_max_index<acc_t>(buf, cols, p.max, p.nan_check);
  return p.max;
}

// Vectors summed into a block's partial sum before it joins the row's: the rounding error of
// a sum grows with the number of terms added to one accumulator, so two levels keep long rows
// (K = 32768: 2048 terms a lane) as accurate as short ones. One add more per block.
constexpr int64_t kSumBlock = 64;

// buf <- exp((buf - m) / tau); returns the sum.
template <typename Isa, typename acc_t>
DG_INLINE acc_t exp_row(acc_t* buf, int64_t cols, acc_t m, acc_t inv_tau) {
  vec16<acc_t> vsum = vsplat<acc_t>(0);
  acc_t e[kLanes];
  int64_t c = 0;
  while (c + kLanes <= cols) {
    const int64_t block_end = c + kSumBlock * kLanes < cols ? c + kSumBlock * kLanes : cols;
    vec16<acc_t> block = vsplat<acc_t>(0);
    for (; c + kLanes <= block_end; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) e[l] = exp_acc<acc_t>((buf[c + l] - m) * inv_tau);
      std::memcpy(buf + c, e, sizeof(e));
      block += vload(e);
    }
    vsum += block;
  }
  if constexpr (Isa::kMaskedRowTail) {
    if (c < cols) {  // the tail as one more vector, -inf (exp 0) past the row
      vec16<acc_t> t;
      Isa::load_tail(buf + c, cols - c, -std::numeric_limits<acc_t>::infinity(), t);
      std::memcpy(e, &t, sizeof(e));
      for (int l = 0; l < kLanes; ++l) e[l] = exp_acc<acc_t>((e[l] - m) * inv_tau);
      t = vload(e);
      Isa::store_tail(buf + c, cols - c, t);
      vsum += t;
    }
    return hsum<acc_t>(vsum);
  } else {
    acc_t s = hsum<acc_t>(vsum);
    for (; c < cols; ++c) {
      buf[c] = exp_acc<acc_t>((buf[c] - m) * inv_tau);
      s += buf[c];
    }
    return s;
  }
}

// Returns the sum of exp((z - max) / tau), in [1, cols] for valid logits (the max's term is 1);
// NaN, 0 or inf flag a NaN or +inf logit, a fully masked row, or an overflow of x + G.
template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE acc_t softmax_row(const scalar_t* x, const acc_t* noise, scalar_t* y, scalar_t* hard,
                            acc_t* scratch, int64_t cols, acc_t inv_tau) {
  constexpr bool kInPlace = std::is_same<scalar_t, acc_t>::value;
  acc_t* buf = kInPlace ? reinterpret_cast<acc_t*>(y) : scratch;
  int64_t idx = 0;
  const acc_t m = perturb_row<Isa, scalar_t, acc_t>(x, noise, buf, cols, hard ? &idx : nullptr);
  const acc_t sum = exp_row<Isa, acc_t>(buf, cols, m, inv_tau);
  const acc_t inv_sum = acc_t(1) / sum;
  for (int64_t c = 0; c < cols; ++c) y[c] = static_cast<scalar_t>(buf[c] * inv_sum);
  if (hard != nullptr) {
    std::memset(static_cast<void*>(hard), 0, cols * sizeof(scalar_t));  // +0.0 in all dtypes
    hard[idx] = static_cast<scalar_t>(1);
  }
  return sum;
}

template <typename scalar_t, typename acc_t>
DG_INLINE void backward_row(const scalar_t* g, const scalar_t* y, scalar_t* gx, int64_t cols,
                            acc_t inv_tau, acc_t* grad_tau) {
  acc_t gv[kLanes], yv[kLanes], t[kLanes];
  vec16<acc_t> vdot = vsplat<acc_t>(0);
  int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    for (int l = 0; l < kLanes; ++l)
      t[l] = load<scalar_t, acc_t>(g + c + l) * load<scalar_t, acc_t>(y + c + l);
    vdot += vload(t);
  }
  acc_t dot = hsum<acc_t>(vdot);
  for (; c < cols; ++c) dot += load<scalar_t, acc_t>(g + c) * load<scalar_t, acc_t>(y + c);
  for (c = 0; c < cols; ++c) {
    const acc_t yc = load<scalar_t, acc_t>(y + c);
    gx[c] = static_cast<scalar_t>(yc * (load<scalar_t, acc_t>(g + c) - dot) * inv_tau);
  }
  if (grad_tau == nullptr) return;
  // sum_i y_i (g_i - dot) log y_i; entries below the smallest normal contribute < 1e-36.
  const acc_t smallest = std::numeric_limits<acc_t>::min();
  vec16<acc_t> vacc = vsplat<acc_t>(0);
  for (c = 0; c + kLanes <= cols; c += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      yv[l] = load<scalar_t, acc_t>(y + c + l);
      gv[l] = load<scalar_t, acc_t>(g + c + l);
    }
    for (int l = 0; l < kLanes; ++l) {
      const bool ok = yv[l] >= smallest;
      const acc_t lg = log_acc<acc_t>(ok ? yv[l] : acc_t(1));
      t[l] = ok ? yv[l] * (gv[l] - dot) * lg : acc_t(0);
    }
    vacc += vload(t);
  }
  acc_t total = hsum<acc_t>(vacc);
  for (; c < cols; ++c) {
    const acc_t yc = load<scalar_t, acc_t>(y + c);
    if (yc >= smallest) total += yc * (load<scalar_t, acc_t>(g + c) - dot) * log_acc<acc_t>(yc);
  }
  *grad_tau = -inv_tau * total;
}


// A row of at most 16 entries (a VAE's 10 categories) in one vector, loaded and stored with
// lane masks, so that nothing goes through memory between the steps: the general path writes
// such a row's entries one by one and reads them back as a vector, which stalls on store
// forwarding (a third of the forward's time on (7680, 10) rows). The same operations as
// softmax_row but for the pairwise sum (tree_sum), so a soft sample may differ from the
// general path's in the last bits; the one-hot is the same. Float32/float64 rows only.
template <typename Isa, typename acc_t>
DG_INLINE acc_t softmax_short_row(const acc_t* x, const acc_t* noise, acc_t* y, acc_t* hard,
                                  int64_t cols, acc_t inv_tau) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  vec16<acc_t> vx, vn;
  Isa::load_tail(x, cols, neg_inf, vx);
  Isa::load_tail(noise, cols, acc_t(0), vn);
  vec16<acc_t> z = vx + vn;  // -inf past the row
  acc_t m = tree_max<acc_t>(z);
  if (__builtin_expect(needs_shift<acc_t>(m), 0)) {  // as in perturb_row
    z = (vx - vsplat<acc_t>(m)) + vn;
    m = tree_max<acc_t>(z);
  }
  acc_t zl[kLanes], e[kLanes];
  std::memcpy(zl, &z, sizeof(zl));
  for (int l = 0; l < kLanes; ++l) e[l] = exp_acc<acc_t>((zl[l] - m) * inv_tau);
  const acc_t sum = tree_sum<acc_t>(vload(e));
  const vec16<acc_t> out = vload(e) * vsplat<acc_t>(acc_t(1) / sum);
  Isa::store_tail(y, cols, out);
  if (hard != nullptr) {
    const int64_t idx = first_max_index<acc_t>(zl, cols, m, tree_sum<acc_t>(nan_lanes<acc_t>(z)));
    std::memset(static_cast<void*>(hard), 0, cols * sizeof(acc_t));
    hard[idx] = acc_t(1);
  }
  return sum;
}

// softmax_short_row where the instruction set has lane masks and the row fits one vector.
template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE acc_t any_row(const scalar_t* x, const acc_t* noise, scalar_t* y, scalar_t* hard,
                        acc_t* scratch, int64_t cols, acc_t inv_tau) {
  if constexpr (Isa::kMaskedTail && std::is_same<scalar_t, acc_t>::value) {
    if (cols <= kLanes) return softmax_short_row<Isa, acc_t>(x, noise, y, hard, cols, inv_tau);
  }
  return softmax_row<Isa, scalar_t, acc_t>(x, noise, y, hard, scratch, cols, inv_tau);
}

// ---------------------------------------------------------------------------------------------
// Block functions over a range of rows, compiled once per instruction set.

struct FwdArgs {
  const void* x;
  void* y;
  void* hard;
  const void* tau_rows;  // acc_t per row, or null
  double tau;
  int64_t cols;
  Seed seed;
  std::atomic<bool>* invalid;  // set when a row's sum says its logits are invalid
};

template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE void fwd_block_impl(const FwdArgs& a, int64_t r0, int64_t r1) {
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* y = static_cast<scalar_t*>(a.y);
  auto* hard = static_cast<scalar_t*>(a.hard);
  const auto* tau_rows = static_cast<const acc_t*>(a.tau_rows);
  const int64_t K = a.cols, group = group_rows(K);
  std::vector<acc_t> scratch(std::is_same<scalar_t, acc_t>::value ? 0 : K);
  std::vector<acc_t> noise(group * K);
  for (int64_t g0 = r0; g0 < r1; g0 += group) {
    const int64_t g1 = g0 + group < r1 ? g0 + group : r1;
    // The group's logits and output lines come from memory (each is touched once per call):
    // fetching them while its noise is drawn hides that latency, which stalled the first pass
    // over each row (a fifth of the profile; the forward got 13% faster, (4096, 1000) float32).
    const auto fetch = [&](uint64_t lo, uint64_t hi) {
      prefetch_bytes<false>(x + lo, (hi - lo) * sizeof(scalar_t));
      prefetch_bytes<true>(y + lo, (hi - lo) * sizeof(scalar_t));
    };
    fill_noise<Isa, acc_t>(g0 * K, g1 * K, noise.data(), a.seed, fetch);
    for (int64_t r = g0; r < g1; ++r) {
      const acc_t inv_tau = acc_t(1) / (tau_rows ? tau_rows[r] : static_cast<acc_t>(a.tau));
      const acc_t sum = any_row<Isa, scalar_t, acc_t>(
          x + r * K, noise.data() + (r - g0) * K, y + r * K, hard ? hard + r * K : nullptr,
          scratch.data(), K, inv_tau);
      // Not in [1/2, inf) (NaN fails both): the input check, fused into the forward.
      if (!(sum >= acc_t(0.5) && sum < std::numeric_limits<acc_t>::infinity()))
        a.invalid->store(true, std::memory_order_relaxed);
    }
  }
}

struct BwdArgs {
  const void* g;
  const void* y;
  void* gx;
  const void* tau_rows;
  void* grad_tau;  // acc_t per row, or null
  double tau;
  int64_t cols;
};

template <typename scalar_t, typename acc_t>
DG_INLINE void bwd_block_impl(const BwdArgs& a, int64_t r0, int64_t r1) {
  const auto* tau_rows = static_cast<const acc_t*>(a.tau_rows);
  auto* grad_tau = static_cast<acc_t*>(a.grad_tau);
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t inv_tau = acc_t(1) / (tau_rows ? tau_rows[r] : static_cast<acc_t>(a.tau));
    backward_row<scalar_t, acc_t>(static_cast<const scalar_t*>(a.g) + r * a.cols,
                                  static_cast<const scalar_t*>(a.y) + r * a.cols,
                                  static_cast<scalar_t*>(a.gx) + r * a.cols, a.cols, inv_tau,
                                  grad_tau ? grad_tau + r : nullptr);
  }
}

struct MaxArgs {
  const void* x;
  int64_t* index;
  int64_t cols;
  Seed seed;
};

template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE void max_block_impl(const MaxArgs& a, int64_t r0, int64_t r1) {
  const int64_t K = a.cols, group = group_rows(K);
  std::vector<acc_t> scratch(K), noise(group * K);
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto fetch = [&](uint64_t lo, uint64_t hi) {  // as in fwd_block_impl
    prefetch_bytes<false>(x + lo, (hi - lo) * sizeof(scalar_t));
  };
  for (int64_t g0 = r0; g0 < r1; g0 += group) {
    const int64_t g1 = g0 + group < r1 ? g0 + group : r1;
    fill_noise<Isa, acc_t>(g0 * K, g1 * K, noise.data(), a.seed, fetch);
    for (int64_t r = g0; r < g1; ++r)
      perturb_row<Isa, scalar_t, acc_t>(x + r * K, noise.data() + (r - g0) * K, scratch.data(), K,
                                        a.index + r);
  }
}

struct NoiseArgs {
  void* out;
  int64_t cols;
  Seed seed;
};

template <typename Isa, typename scalar_t, typename acc_t>
DG_INLINE void noise_block_impl(const NoiseArgs& a, int64_t r0, int64_t r1) {
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t K = a.cols;
  if constexpr (std::is_same<scalar_t, acc_t>::value) {
    fill_noise<Isa, acc_t>(r0 * K, r1 * K, out + r0 * K, a.seed);
  } else {
    const int64_t group = group_rows(K);
    std::vector<acc_t> noise(group * K);
    for (int64_t g0 = r0; g0 < r1; g0 += group) {
      const int64_t g1 = g0 + group < r1 ? g0 + group : r1;
      fill_noise<Isa, acc_t>(g0 * K, g1 * K, noise.data(), a.seed);
      for (int64_t i = 0; i < (g1 - g0) * K; ++i) out[g0 * K + i] = static_cast<scalar_t>(noise[i]);
    }
  }
}

using FwdFn = void (*)(const FwdArgs&, int64_t, int64_t);
using BwdFn = void (*)(const BwdArgs&, int64_t, int64_t);
using MaxFn = void (*)(const MaxArgs&, int64_t, int64_t);
using NoiseFn = void (*)(const NoiseArgs&, int64_t, int64_t);

// Dtype index: 0 float32, 1 float64, 2 float16, 3 bfloat16.
struct Table {
  FwdFn fwd[4];
  BwdFn bwd[4];
  MaxFn max[4];
  NoiseFn noise[4];
};

#define DG_DEFINE_ISA(SUFFIX, ATTR, ISA)                                                   \
  ATTR void fwd_f32_##SUFFIX(const FwdArgs& a, int64_t r0, int64_t r1) {                   \
    fwd_block_impl<ISA, float, float>(a, r0, r1);                                          \
  }                                                                                        \
  ATTR void fwd_f64_##SUFFIX(const FwdArgs& a, int64_t r0, int64_t r1) {                   \
    fwd_block_impl<ISA, double, double>(a, r0, r1);                                        \
  }                                                                                        \
  ATTR void fwd_f16_##SUFFIX(const FwdArgs& a, int64_t r0, int64_t r1) {                   \
    fwd_block_impl<ISA, c10::Half, float>(a, r0, r1);                                      \
  }                                                                                        \
  ATTR void fwd_bf16_##SUFFIX(const FwdArgs& a, int64_t r0, int64_t r1) {                  \
    fwd_block_impl<ISA, c10::BFloat16, float>(a, r0, r1);                                  \
  }                                                                                        \
  ATTR void bwd_f32_##SUFFIX(const BwdArgs& a, int64_t r0, int64_t r1) {                   \
    bwd_block_impl<float, float>(a, r0, r1);                                               \
  }                                                                                        \
  ATTR void bwd_f64_##SUFFIX(const BwdArgs& a, int64_t r0, int64_t r1) {                   \
    bwd_block_impl<double, double>(a, r0, r1);                                             \
  }                                                                                        \
  ATTR void bwd_f16_##SUFFIX(const BwdArgs& a, int64_t r0, int64_t r1) {                   \
    bwd_block_impl<c10::Half, float>(a, r0, r1);                                           \
  }                                                                                        \
  ATTR void bwd_bf16_##SUFFIX(const BwdArgs& a, int64_t r0, int64_t r1) {                  \
    bwd_block_impl<c10::BFloat16, float>(a, r0, r1);                                       \
  }                                                                                        \
  ATTR void max_f32_##SUFFIX(const MaxArgs& a, int64_t r0, int64_t r1) {                   \
    max_block_impl<ISA, float, float>(a, r0, r1);                                          \
  }                                                                                        \
  ATTR void max_f64_##SUFFIX(const MaxArgs& a, int64_t r0, int64_t r1) {                   \
    max_block_impl<ISA, double, double>(a, r0, r1);                                        \
  }                                                                                        \
  ATTR void max_f16_##SUFFIX(const MaxArgs& a, int64_t r0, int64_t r1) {                   \
    max_block_impl<ISA, c10::Half, float>(a, r0, r1);                                      \
  }                                                                                        \
  ATTR void max_bf16_##SUFFIX(const MaxArgs& a, int64_t r0, int64_t r1) {                  \
    max_block_impl<ISA, c10::BFloat16, float>(a, r0, r1);                                  \
  }                                                                                        \
  ATTR void noise_f32_##SUFFIX(const NoiseArgs& a, int64_t r0, int64_t r1) {               \
    noise_block_impl<ISA, float, float>(a, r0, r1);                                        \
  }                                                                                        \
  ATTR void noise_f64_##SUFFIX(const NoiseArgs& a, int64_t r0, int64_t r1) {               \
    noise_block_impl<ISA, double, double>(a, r0, r1);                                      \
  }                                                                                        \
  ATTR void noise_f16_##SUFFIX(const NoiseArgs& a, int64_t r0, int64_t r1) {               \
    noise_block_impl<ISA, c10::Half, float>(a, r0, r1);                                    \
  }                                                                                        \
  ATTR void noise_bf16_##SUFFIX(const NoiseArgs& a, int64_t r0, int64_t r1) {              \
    noise_block_impl<ISA, c10::BFloat16, float>(a, r0, r1);                                \
  }                                                                                        \
  const Table table_##SUFFIX = {                                                           \
      {fwd_f32_##SUFFIX, fwd_f64_##SUFFIX, fwd_f16_##SUFFIX, fwd_bf16_##SUFFIX},           \
      {bwd_f32_##SUFFIX, bwd_f64_##SUFFIX, bwd_f16_##SUFFIX, bwd_bf16_##SUFFIX},           \
      {max_f32_##SUFFIX, max_f64_##SUFFIX, max_f16_##SUFFIX, max_bf16_##SUFFIX},           \
      {noise_f32_##SUFFIX, noise_f64_##SUFFIX, noise_f16_##SUFFIX, noise_bf16_##SUFFIX}};

#ifdef DG_X86_SIMD
DG_DEFINE_ISA(base, , IsaSse2)
DG_DEFINE_ISA(avx2, DG_TARGET_AVX2, IsaAvx2)
DG_DEFINE_ISA(avx512, DG_TARGET_AVX512, IsaAvx512)
#else
DG_DEFINE_ISA(base, , IsaGeneric)
#endif

const char* g_isa = "baseline";

// DISCOGRAD_CPU_ISA=avx2 or baseline caps the variant (never above what the CPU has), so that
// one machine can test the variants a user's CPU would run.
const Table& pick_table() {
#ifdef DG_X86_SIMD
  static const Table* chosen = [] {
    __builtin_cpu_init();
    const char* cap = std::getenv("DISCOGRAD_CPU_ISA");
    const bool allow512 = cap == nullptr || *cap == 0 || std::strcmp(cap, "avx512") == 0;
    const bool allow2 = allow512 || std::strcmp(cap, "avx2") == 0;
    if (allow512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")) {
      g_isa = "avx512";
      return &table_avx512;
    }
    if (allow2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      g_isa = "avx2";
      return &table_avx2;
    }
    return &table_base;
  }();
  return *chosen;
#else
  return table_base;
#endif
}

int dtype_index(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float:
      return 0;
    case c10::ScalarType::Double:
      return 1;
    case c10::ScalarType::Half:
      return 2;
    case c10::ScalarType::BFloat16:
      return 3;
    default:
      TORCH_CHECK(false, "discograd kernels: unsupported dtype ", t);
  }
  return -1;
}

Seed read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.device().is_cpu() && seed.scalar_type() == c10::ScalarType::Long &&
                  seed.numel() == 1,
              "discograd kernels: seed must be a CPU int64 tensor with one element");
  const uint64_t s = static_cast<uint64_t>(seed.contiguous().data_ptr<int64_t>()[0]);
  return Seed{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

// Outputs of at least this size get transparent huge pages (see advise_huge_pages).
constexpr size_t kHugeAdviseBytes = size_t(32) << 20;

// Hint the kernel to back a large output the op has just allocated with 2 MiB pages. glibc
// usually serves allocations of 32 MiB or more with a fresh mmap, so each call pays a page
// fault per 4 KiB page on first touch, about 1.4 us each in the VM we measured: 20 ms of
// faults to fill 64 MiB, against 5 ms with huge pages (2.5 ms warm). With transparent huge
// pages in "madvise" mode (a common default) only advised ranges get them. Only the 2 MiB
// aligned interior is advised, only outside the brk heap, and only if its first page was
// never touched. glibc serves a large request from the heap's top when enough is free there;
// that memory may be touched (no faults left to save) or fresh, and advising any of it would
// split the heap's mapping for good, so the heap is left alone whatever mincore says (the
// heap and the program lie below the break, mmap'd memory above it on Linux). Errors are
// ignored: the hint changes speed only, and it touches no memory but the tensor's own.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = t.nbytes();
  if (bytes < kHugeAdviseBytes) return;
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (p + bytes) & ~(kHuge - 1);
  if (hi <= lo) return;
  if (lo < reinterpret_cast<uintptr_t>(sbrk(0))) return;
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(lo), 1, &resident) != 0 || (resident & 1) != 0) return;
  (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// A new tensor like `t` (contiguous), advised for huge pages when large, before first touch.
at::Tensor empty_output(const at::Tensor& t) {
  at::Tensor out = at::empty(t.sizes(), t.options(), at::MemoryFormat::Contiguous);
  advise_huge_pages(out);
  return out;
}

// Rows per task: enough work (about 16k entries) to pay for a thread hand-off.
int64_t grain(int64_t cols) {
  const int64_t g = (16384 + cols - 1) / (cols > 0 ? cols : 1);
  return g < 1 ? 1 : g;
}

// The invalid-logits error of the checked forward (the same text as the Triton kernel's).
constexpr const char* kInvalidMessage =
    "gumbel_softmax: the softmax normalizer is not finite in some row (NaN or +inf logits, a "
    "fully masked row, or logits or 1 / tau too large in magnitude)";

void check_2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.device().is_cpu(),
              "discograd kernels: ", name, " must be a contiguous 2-d CPU tensor");
}

const void* tau_rows_ptr(const std::optional<at::Tensor>& tau_rows, const at::Tensor& x) {
  if (!tau_rows.has_value()) return nullptr;
  const auto& t = *tau_rows;
  const auto acc = x.scalar_type() == c10::ScalarType::Double ? c10::ScalarType::Double
                                                               : c10::ScalarType::Float;
  TORCH_CHECK(t.scalar_type() == acc && t.is_contiguous() && t.numel() == x.size(0),
              "discograd kernels: tau_rows must be a contiguous ", acc, " tensor of ",
              x.size(0), " entries");
  return t.data_ptr();
}

at::Tensor softmax_impl(const at::Tensor& x, const at::Tensor& seed, double tau,
                        const std::optional<at::Tensor>& tau_rows, at::Tensor* hard, bool check) {
  check_2d(x, "logits");
  const int di = dtype_index(x.scalar_type());
  at::Tensor y = empty_output(x);
  std::atomic<bool> invalid{false};
  FwdArgs a{x.data_ptr(),
            y.data_ptr(),
            hard ? hard->data_ptr() : nullptr,
            tau_rows_ptr(tau_rows, x),
            tau,
            x.size(1),
            read_seed(seed),
            &invalid};
  const FwdFn fn = pick_table().fwd[di];
  if (x.numel() > 0)
    at::parallel_for(0, x.size(0), grain(x.size(1)),
                     [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  // A ValueError in Python; discograd's wrapper then finds which rule the logits break.
  TORCH_CHECK_VALUE(!(check && invalid.load()), kInvalidMessage);
  return y;
}

at::Tensor gumbel_softmax_cpu(const at::Tensor& x, const at::Tensor& seed, double tau,
                              const std::optional<at::Tensor>& tau_rows, bool check) {
  return softmax_impl(x, seed, tau, tau_rows, nullptr, check);
}

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_hard_cpu(
    const at::Tensor& x, const at::Tensor& seed, double tau,
    const std::optional<at::Tensor>& tau_rows, bool check) {
  check_2d(x, "logits");
  at::Tensor hard = empty_output(x);
  at::Tensor y = softmax_impl(x, seed, tau, tau_rows, &hard, check);
  return {hard, y};
}

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_backward_cpu(
    const at::Tensor& grad, const at::Tensor& y, double tau,
    const std::optional<at::Tensor>& tau_rows, bool tau_grad) {
  check_2d(y, "soft sample");
  const at::Tensor g = grad.contiguous();
  TORCH_CHECK(g.sizes() == y.sizes() && g.scalar_type() == y.scalar_type(),
              "discograd kernels: grad must match the soft sample");
  const int di = dtype_index(y.scalar_type());
  at::Tensor gx = empty_output(y);
  const auto acc = y.scalar_type() == c10::ScalarType::Double ? c10::ScalarType::Double
                                                               : c10::ScalarType::Float;
  at::Tensor gt = at::empty({tau_grad ? y.size(0) : 0}, y.options().dtype(acc));
  BwdArgs a{g.data_ptr(),
            y.data_ptr(),
            gx.data_ptr(),
            tau_rows_ptr(tau_rows, y),
            tau_grad ? gt.data_ptr() : nullptr,
            tau,
            y.size(1)};
  const BwdFn fn = pick_table().bwd[di];
  if (y.numel() > 0)
    at::parallel_for(0, y.size(0), grain(y.size(1)),
                     [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  return {gx, gt};
}

at::Tensor gumbel_argmax_cpu(const at::Tensor& x, const at::Tensor& seed) {
  check_2d(x, "logits");
  const int di = dtype_index(x.scalar_type());
  at::Tensor index = at::empty({x.size(0)}, x.options().dtype(c10::ScalarType::Long));
  MaxArgs a{x.data_ptr(), index.data_ptr<int64_t>(), x.size(1), read_seed(seed)};
  const MaxFn fn = pick_table().max[di];
  if (x.numel() > 0)
    at::parallel_for(0, x.size(0), grain(x.size(1)),
                     [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  return index;
}

at::Tensor gumbel_noise_cpu(const at::Tensor& seed, int64_t rows, int64_t cols,
                            c10::ScalarType dtype) {
  const int di = dtype_index(dtype);
  at::Tensor out = at::empty({rows, cols}, seed.options().dtype(dtype));
  advise_huge_pages(out);
  NoiseArgs a{out.data_ptr(), cols, read_seed(seed)};
  const NoiseFn fn = pick_table().noise[di];
  if (out.numel() > 0)
    at::parallel_for(0, rows, grain(cols), [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
  return out;
}

// Which instruction set the kernels run with (0 baseline, 1 AVX2, 2 AVX-512), for status().
int64_t isa_level(const at::Tensor& unused) {
  (void)unused;
  pick_table();
  if (std::strcmp(g_isa, "avx512") == 0) return 2;
  if (std::strcmp(g_isa, "avx2") == 0) return 1;
  return 0;
}

}  // namespace

TORCH_LIBRARY_IMPL(discograd, CPU, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cpu);
  m.impl("gumbel_softmax_hard", &gumbel_softmax_hard_cpu);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cpu);
  m.impl("gumbel_argmax", &gumbel_argmax_cpu);
  m.impl("gumbel_noise", &gumbel_noise_cpu);
  m.impl("isa_level", &isa_level);
}

}  // namespace discograd_kernels
