// The per-element math shared by the CPU and CUDA kernels: Philox4x32-10, Box-Muller noise and the fused
// sampler step. Everything here compiles both as host C++ and as CUDA device code, and the host build
// (-ffp-contract=off) and the device build (--fmad=false, IEEE div/sqrt) perform the same sequence of
// correctly rounded float operations, so the noise is bit-identical on CPU and GPU.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define FX_HD __host__ __device__ __forceinline__
#else
#define FX_HD inline
#endif

namespace flexidit {

// ---------------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; Random123).
//
// Counter layout used everywhere in flexidit-trt. The standard normal for element e (flat row-major
// index into the latent x of shape [B, C, H, W], plus an element offset o, a multiple of 4, that lets a
// run split N images into batches and still draw each image's noise from the one flat stream of all N)
// of sampler step s under a 64-bit seed is
//
//     key     = (seed & 0xffffffff, seed >> 32)
//     counter = (g & 0xffffffff, g >> 32, s, 0)        with g = (o + e) / 4
//     (r0, r1, r2, r3) = Philox4x32-10(counter, key)
//     normal[4g + 0], normal[4g + 1] = BoxMuller(r0, r1)
//     normal[4g + 2], normal[4g + 3] = BoxMuller(r2, r3)
//
// so it depends on (seed, s, e) only: not on the batch size (sample b of a batch of 8 gets the noise
// of sample b of a batch of 1 when b = 0), the device, the launch shape or the stream.
// ---------------------------------------------------------------------------------------------------
struct U32x4 {
  uint32_t v0, v1, v2, v3;
};

FX_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;  // golden ratio
      k1 += 0xBB67AE85u;  // sqrt(3) - 1
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * ctr.v0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * ctr.v2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = U32x4{hi1 ^ ctr.v1 ^ k0, lo1, hi0 ^ ctr.v3 ^ k1, lo0};
  }
  return ctr;
}

FX_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

FX_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Natural log of x in [2^-24, 1] (normal floats only) from +, -, *, / alone: x = 2^e * m with m in
// [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s) = 2 (s + s^3/3 + ... + s^11/11) with s = (m-1)/(m+1),
// |s| <= 0.172 (truncation error < 2e-11); e * ln2 in two parts (Cody-Waite) so e * LN2_HI is exact.
FX_HD float log_unit(float x) {
  const uint32_t bits = float_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  float m = bits_float((bits & 0x007FFFFFu) | 0x3F800000u);  // [1, 2), exact
  if (m > 1.41421356f) {
    m = m * 0.5f;  // exact
    e += 1;
  }
  const float s = (m - 1.0f) / (m + 1.0f);  // m - 1 is exact (Sterbenz)
  const float z = s * s;
  const float poly =
      2.0f + z * (0.666666667f + z * (0.4f + z * (0.285714286f + z * (0.222222222f + z * 0.181818182f))));
  const float LN2_HI = 0.693145751953125f;       // 15 significant bits: e * LN2_HI exact for |e| < 512
  const float LN2_LO = 1.42860682030941723e-6f;  // ln 2 - LN2_HI
  const float ef = static_cast<float>(e);
  return ef * LN2_HI + (ef * LN2_LO + s * poly);
}

// sin and cos of 2*pi*k/2^24 for a 24-bit integer k, from +, -, * alone. The reduction is exact and in
// integers: q = round(4k/2^24) is the nearest quarter turn, f = 4k/2^24 - q in [-1/2, 1/2) is exact,
// the residual angle t = f*pi/2 lies in [-pi/4, pi/4] where Taylor polynomials of degree 9 (sin) and 10
// (cos) are accurate to 2e-9; the quadrant q mod 4 then swaps and negates.
FX_HD void sincos_2pi_u24(uint32_t k, float* sin_out, float* cos_out) {
  const int32_t q = static_cast<int32_t>((k + (1u << 21)) >> 22);     // 0..4
  const int32_t rem = static_cast<int32_t>(k) - (q << 22);            // [-2^21, 2^21)
  const float f = static_cast<float>(rem) * 2.384185791015625e-07f;  // rem / 2^22, exact
  const float t = f * 1.57079632679489662f;
  const float t2 = t * t;
  const float sn =
      t + t * t2 * (-0.166666667f + t2 * (8.33333333e-3f + t2 * (-1.98412698e-4f + t2 * 2.75573192e-6f)));
  const float cs =
      1.0f +
      t2 * (-0.5f +
            t2 * (4.16666667e-2f + t2 * (-1.38888889e-3f + t2 * (2.48015873e-5f + t2 * -2.75573192e-7f))));
  switch (q & 3) {
    case 0:
      *sin_out = sn;
      *cos_out = cs;
      break;
    case 1:
      *sin_out = cs;
      *cos_out = -sn;
      break;
    case 2:
      *sin_out = -sn;
      *cos_out = -cs;
      break;
    default:
      *sin_out = -cs;
      *cos_out = sn;
      break;
  }
}

// Two standard normals from two 32-bit words: u1 = ((a >> 8) + 1) / 2^24 in (0, 1] (log finite),
// angle 2*pi*(b >> 8)/2^24; n0 = sqrt(-2 log u1) cos(angle), n1 = sqrt(-2 log u1) sin(angle).
FX_HD void box_muller(uint32_t a, uint32_t b, float* n0, float* n1) {
  const float u1 = static_cast<float>((a >> 8) + 1u) * 5.9604644775390625e-08f;  // exact
  const float radius = sqrtf(-2.0f * log_unit(u1));
  float sn, cs;
  sincos_2pi_u24(b >> 8, &sn, &cs);
  *n0 = radius * cs;
  *n1 = radius * sn;
}

// The four normals of counter group g (elements 4g .. 4g+3) for (seed, step).
FX_HD void philox_normal4(uint64_t seed, uint32_t step, uint64_t group, float out[4]) {
  const U32x4 ctr{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32), step, 0u};
  const U32x4 r = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller(r.v0, r.v1, &out[0], &out[1]);
  box_muller(r.v2, r.v3, &out[2], &out[3]);
}

// Elements 4*group .. of out get the normals of counter group group_offset + group.
FX_HD void philox_normal_group(uint64_t seed, uint32_t step, int64_t n, float* out, int64_t group,
                               uint64_t group_offset) {
  float z[4];
  philox_normal4(seed, step, static_cast<uint64_t>(group) + group_offset, z);
  const int64_t e0 = 4 * group;
  for (int j = 0; j < 4 && e0 + j < n; ++j) out[e0 + j] = z[j];
}

// ---------------------------------------------------------------------------------------------------
// Model-output element types (fp32 math inside).
// ---------------------------------------------------------------------------------------------------
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

FX_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact
    const float f = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -f : f;
  }
  if (exponent == 0x1F) return bits_float(sign | 0x7F800000u | (mantissa << 13));  // inf / nan
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

FX_HD float bfloat16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

template <int DT>
FX_HD float load_as_float(const void* p, int64_t i) {
  if constexpr (DT == kFloat32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (DT == kFloat16) {
    return half_to_float(static_cast<const uint16_t*>(p)[i]);
  } else {
    return bfloat16_to_float(static_cast<const uint16_t*>(p)[i]);
  }
}

// ---------------------------------------------------------------------------------------------------
// The fused sampler step: guidance, then the StepCoeffs formula (flexidit_trt/diffusion/coeffs.py).
//
//   pred    = baseline + scale * (cond - baseline)  for prediction channels c < guided_channels
//             (when a baseline is given), cond otherwise
//   mean    = c_x * x + c_pred * pred
//   std     = exp(0.5 * (frac * log_var_max + (1 - frac) * log_var_min)), frac = (v + 1) / 2
//             with v = cond[:, C + c] (learned variance), else sigma
//   x_prev  = mean + std * noise                     (add_noise; noise from a buffer or Philox)
//
// x, noise and x_prev are fp32 [B, C, H, W]; cond and baseline are [B, out_channels, H, W] in the model's
// dtype. x_prev may alias x: every element is read before it is written, by the same thread.
// ---------------------------------------------------------------------------------------------------
struct StepParams {
  const float* x;
  const void* cond;
  const void* baseline;  // null: no guidance
  float* out;
  const float* noise;    // null with add_noise: Philox noise from (seed, step)
  int64_t batch, channels, hw, out_channels;
  int64_t guided_channels;
  float guidance_scale;
  float c_x, c_pred;
  float log_var_max, log_var_min, sigma;
  bool learned_variance, add_noise;
  uint64_t seed;
  uint32_t step;
  uint64_t group_offset;  // Philox counter group of element 0 (element offset / 4)

  FX_HD int64_t numel() const { return batch * channels * hw; }
  FX_HD int64_t groups() const { return (numel() + 3) / 4; }
};

template <int DT>
FX_HD void step_group(const StepParams& p, int64_t group) {
  float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (p.add_noise && p.noise == nullptr) {
    philox_normal4(p.seed, p.step, static_cast<uint64_t>(group) + p.group_offset, z);
  }
  const int64_t n = p.numel();
  const int64_t chw = p.channels * p.hw;
  const int64_t e0 = 4 * group;
  for (int j = 0; j < 4 && e0 + j < n; ++j) {
    const int64_t e = e0 + j;
    const int64_t b = e / chw;
    const int64_t c = (e - b * chw) / p.hw;
    const int64_t s = e - b * chw - c * p.hw;
    const int64_t i = (b * p.out_channels + c) * p.hw + s;  // prediction channel c of sample b
    float pred = load_as_float<DT>(p.cond, i);
    if (p.baseline != nullptr && c < p.guided_channels) {
      const float base = load_as_float<DT>(p.baseline, i);
      pred = base + p.guidance_scale * (pred - base);
    }
    float value = p.c_x * p.x[e] + p.c_pred * pred;
    if (p.add_noise) {
      float std_dev = p.sigma;
      if (p.learned_variance) {
        const float v = load_as_float<DT>(p.cond, i + chw);  // variance channel C + c
        const float frac = (v + 1.0f) * 0.5f;
        std_dev = expf(0.5f * (frac * p.log_var_max + (1.0f - frac) * p.log_var_min));
      }
      value = value + std_dev * (p.noise != nullptr ? p.noise[e] : z[j]);
    }
    p.out[e] = value;
  }
}

}  // namespace flexidit
