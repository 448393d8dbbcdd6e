"""Optional compiled kernel: binary-input convolution fused with the neuron update, exact int32.

Why a lookup table: the input of a spiking convolution is 0/1, so ``sum_c w[o, c] * s[c]`` over a group of four
input channels takes one of 16 values per output channel. They are precomputed per kernel tap (``[k*k, C_in/4, 16,
C_out]`` int32, 72 KiB for a 3x3 32->32 layer, cache resident); a pixel then costs ``k*k*C_in/4`` vector adds of
one table row, no multiplications, no branches on spike values, and the result is exact by construction. The
neuron update (leak, integrate, fire, reset) runs on the accumulator while it is still in registers, so the
currents are never written to memory; the spikes leave as bytes, the next layer's input.

The C source is compiled on first use with the system compiler (``$CC``, else ``cc``/``gcc``/``clang``) into a
per-user cache (``EDGESPIKE_CACHE``, else ``~/.cache/edgespike``). The optional flags are probed one by one
(:func:`probe_flags`): ``-march=native`` or ``-mcpu=native`` and, independently, ``-fopenmp`` (threads over output
rows), so a compiler without "native" (a cross compiler, clang on some ARM boards) still gets OpenMP; extra flags
come from ``EDGESPIKE_CFLAGS``. The cached library's name hashes the source, the compiler's identity and version,
the flags and the CPU (:func:`plan`): a changed compiler, flag or CPU builds anew instead of reusing a library
built single-threaded or for another CPU. :func:`load` returns ``None`` when no kernel can be built, with the
compiler's reason in :func:`load_error`; the runtime then falls back to numpy and says so (a ``RuntimeWarning``,
and one line from the CLI). Set ``EDGESPIKE_NO_KERNEL=1`` to disable it. The source uses GCC/Clang vector
extensions only, so the same code builds for x86-64 (AVX2), aarch64 and armhf (NEON) boards; the tests run
cross-compiled builds under qemu-user against the reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

/* 1 when built with OpenMP: the Python side checks that the threads it asks for exist */
int kernel_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#define INLINE static inline __attribute__((always_inline))
/* 32-byte vectors: 8 x int32 or 16 x uint16 lanes. Loads are declared 4-byte aligned (numpy gives 16). */
typedef int32_t v8 __attribute__((vector_size(32)));
typedef int32_t v8u __attribute__((vector_size(32), aligned(4)));
typedef uint16_t w16 __attribute__((vector_size(32)));
typedef uint16_t w16u __attribute__((vector_size(32), aligned(2)));

INLINE uint32_t nibble(const uint8_t *p) {
    /* four 0/1 bytes -> 4-bit index (b3 | b2<<1 | b1<<2 | b0<<3): the multiply places each byte's bit 0 at a
       distinct position of bits 24..27 without carries */
    uint32_t u;
    memcpy(&u, p, 4);
    return ((u & 0x01010101u) * 0x08040201u) >> 24;
}

/* One output row of one step for accumulator vector type VT. The row is processed in blocks of BLK pixels, tap
   by tap: one tap's table slice (C_in/4 x 16 rows, 8 KiB for 32 -> 32 channels in int16) stays in L1 while it
   serves the whole block, instead of the full table (k*k slices) being swept for every pixel. NQ (vectors per
   output pixel) is a compile-time constant in the specialised calls. 16-bit lanes use unsigned wrap-around
   arithmetic: exact because the final sum is proved to fit int16 (fits16 in Python). */
#define BLK 64
#define ROW_FN(NAME, VT, VTU, LT)                                                                              \
INLINE void NAME(const uint16_t *x, const uint16_t *nz, int h, int w, int k, int st, int oy, int wo,           \
                 const VTU *lut, int groups, int nq, int co, const int32_t *bias, int32_t *v,                  \
                 const int32_t *theta, int leak, int hard, int uwd, uint8_t *so) {                             \
    VT acc[BLK * nq];                                                                                         \
    int p = k / 2;                                                                                           \
    long tabstride = 16L * nq;                                                                               \
    for (int ox0 = 0; ox0 < wo; ox0 += BLK) {                                                                \
        int nb = wo - ox0 < BLK ? wo - ox0 : BLK;                                                            \
        for (int b = 0; b < nb * nq; b++) acc[b] = (VT){0};                                                  \
        for (int i = 0; i < k; i++) {                                                                        \
            int iy = oy * st + i - p;                                                                        \
            if (iy < 0 || iy >= h) continue;                                                                 \
            const uint16_t *xrow = x + (long)iy * w * groups;                                                  \
            const uint16_t *nzrow = nz + (long)iy * w;                                                         \
            for (int j = 0; j < k; j++) {                                                                    \
                const VTU *tab = lut + (long)((i * k + j) * groups) * tabstride;                             \
                /* output pixels of this block whose input column is inside the frame */                     \
                int lo = 0, hi = nb;                                                                         \
                while (lo < nb && (ox0 + lo) * st + j - p < 0) lo++;                                         \
                while (hi > lo && (ox0 + hi - 1) * st + j - p >= w) hi--;                                    \
                for (int b = lo; b < hi; b++) {                                                              \
                    /* only the groups of four channels with a spike: their codes g*16 + nibble index,        \
                       the rows of the tap table, so the work follows the spikes (none: skip the pixel) */      \
                    int ix = (ox0 + b) * st + j - p, nnz = nzrow[ix];                                          \
                    if (!nnz) continue;                                                                        \
                    const uint16_t *codes = xrow + (long)ix * groups;                                          \
                    VT *a = acc + b * nq;                                                                      \
                    VT s0[nq], s1[nq];                                                                         \
                    for (int q = 0; q < nq; q++) { s0[q] = a[q]; s1[q] = (VT){0}; }                            \
                    int g = 0;                                                                                 \
                    for (; g + 1 < nnz; g += 2) {                                                              \
                        const VTU *r0 = tab + (long)codes[g] * nq;                                             \
                        const VTU *r1 = tab + (long)codes[g + 1] * nq;                                         \
                        for (int q = 0; q < nq; q++) { s0[q] += r0[q]; s1[q] += r1[q]; }                       \
                    }                                                                                          \
                    if (g < nnz) {                                                                             \
                        const VTU *r0 = tab + (long)codes[g] * nq;                                             \
                        for (int q = 0; q < nq; q++) s0[q] += r0[q];                                           \
                    }                                                                                          \
                    for (int q = 0; q < nq; q++) a[q] = s0[q] + s1[q];                                         \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int b = 0; b < nb; b++) {                                                                       \
            const LT *a = (const LT *)(acc + b * nq);                                                        \
            int32_t *vv = v + (long)(ox0 + b) * co;                                                          \
            uint8_t *ss = so + (long)(ox0 + b) * co;                                                         \
            if (uwd) {  /* bit-plane decoding (UWD): the membrane doubles, then integrates; no firing */     \
                for (int c = 0; c < co; c++) vv[c] = 2 * vv[c] + (int32_t)a[c] + bias[c];                    \
                continue;                                                                                    \
            }                                                                                                \
            for (int c = 0; c < co; c++) {                                                                   \
                int32_t m = vv[c];                                                                           \
                if (leak) m -= m >> leak;                                                                    \
                m += (int32_t)a[c] + bias[c];                                                                \
                int32_t s = m >= theta[c];                                                                   \
                m = hard ? (s ? 0 : m) : m - (s ? theta[c] : 0);                                             \
                vv[c] = m;                                                                                   \
                ss[c] = (uint8_t)s;                                                                          \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
}

ROW_FN(row32, v8, v8u, int32_t)
ROW_FN(row16, w16, w16u, int16_t)

/* x: [L][h][w][cs] uint8 0/1 (cs = C_in padded to a multiple of 4; x_step = 0 repeats one step)
   lut: [k*k][cs/4][16][lanes*nq] (int32, or int16 when wide16 = 0... see Python); v: [ho][wo][co] int32
   membranes (updated); spk: [L][ho][wo][co] uint8; counts[t] = spikes of step t in output rows cy0..cy1-1 (the
   strip's core, for the statistics) */
int conv_neuron(const uint8_t *x, int L, long x_step, int h, int w, int cs, int k, int st,
                const void *lut, int co, int nq, int lanes16, const int32_t *bias,
                int32_t *v, const int32_t *theta, int leak, int hard, int uwd, uint8_t *spk, int threads,
                int cy0, int cy1, int64_t *counts) {
    int ho = (h + st - 1) / st, wo = (w + st - 1) / st, groups = cs / 4;
    if (nq > 64 || groups > 4096) return -1;  /* codes g * 16 + nibble are uint16 */
    /* Nibble indices once per input pixel (each is read by k*k output pixels). */
    int Lx = x_step ? L : 1;
    long npx = (long)h * w;
    /* per input pixel, the groups that carry a spike, as codes g * 16 + nibble (the row of the tap table), and
       how many there are */
    uint16_t *idx = malloc((size_t)Lx * npx * (groups + 1) * sizeof(uint16_t));
    if (!idx) return -2;
    uint16_t *nzs = idx + (size_t)Lx * npx * groups;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long e = 0; e < Lx * npx; e++) {
        const uint8_t *src = x + (e / npx) * x_step + (e % npx) * cs;
        int n = 0;
        for (int g = 0; g < groups; g++) {
            uint32_t nib = nibble(src + 4 * g);
            if (nib) idx[e * groups + n++] = (uint16_t)(g * 16 + nib);
        }
        nzs[e] = (uint16_t)n;
    }
    for (int t = 0; t < L; t++) {
        const uint16_t *xt = idx + (x_step ? (long)t * npx * groups : 0);
        const uint16_t *nzt = nzs + (x_step ? (long)t * npx : 0);
        uint8_t *so = spk + (long)t * ho * wo * co;
        long cnt = 0;
        if (uwd) {  /* a bit plane without any spike: the decoding only doubles the membrane and adds the bias */
            long any = 0;
            for (long e = 0; e < npx && !any; e++) any = nzt[e];
            if (!any) {
                #pragma omp parallel for schedule(static) num_threads(threads)
                for (long e = 0; e < (long)ho * wo; e++)
                    for (int c = 0; c < co; c++) v[e * co + c] = 2 * v[e * co + c] + bias[c];
                counts[t] = 0;
                continue;
            }
        }
        /* dynamic: on a shared machine a thread that loses its core leaves its rows to the others instead of
           holding up the step (with static halves, 2 threads could be slower than 1) */
        #pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(+:cnt)
        for (int oy = 0; oy < ho; oy++) {
            int32_t *vr = v + (long)oy * wo * co;
            uint8_t *sr = so + (long)oy * wo * co;
#define CALL(FN, TY, N, G) FN(xt, nzt, h, w, k, st, oy, wo, (const TY *)lut, G, N, co, bias, vr, theta, leak, hard, \
                               uwd, sr)
            /* compile-time shapes for the common layers (32 or 16 channels in and out, 3x3) */
            if (lanes16 && nq == 2 && groups == 8 && k == 3) CALL(row16, w16u, 2, 8);
            else if (lanes16 && nq == 1 && groups == 4 && k == 3) CALL(row16, w16u, 1, 4);
            else if (lanes16 && nq == 1 && groups == 8 && k == 3) CALL(row16, w16u, 1, 8);
            else if (lanes16) {
                switch (nq) {
                case 1: CALL(row16, w16u, 1, groups); break;
                case 2: CALL(row16, w16u, 2, groups); break;
                case 4: CALL(row16, w16u, 4, groups); break;
                default: CALL(row16, w16u, nq, groups);
                }
            } else {
                switch (nq) {
                case 1: CALL(row32, v8u, 1, groups); break;
                case 2: CALL(row32, v8u, 2, groups); break;
                case 4: CALL(row32, v8u, 4, groups); break;
                case 8: CALL(row32, v8u, 8, groups); break;
                default: CALL(row32, v8u, nq, groups);
                }
            }
            if (!uwd && oy >= cy0 && oy < cy1) {  /* the row is still in cache */
                long c = 0;
                for (long e = 0; e < (long)wo * co; e++) c += sr[e];
                cnt += c;
            }
        }
        counts[t] = cnt;
    }
    free(idx);
    return 0;
}

/* Bit-plane neuron (docs/SEMANTICS.md 5.5) on decoded membranes: q = clip(floor((v + bias) / theta), 0, levels).
   v [n][co] holds integers as float (vt = 0), double (vt = 1) or int32 (vt = 2); q [n][co] is uint8 (levels < 256)
   or uint16. Exact in double: v + bias is an integer below 2^53, the quotient estimated with a reciprocal is
   corrected by one step where the remainder says so, and every product below is an exact integer. bits[b]
   counts the values of q in rows p0..p1-1 (the strip's core; levels < 256 only) that have bit b set: the spikes
   of the step that emits bit b. */
INLINE void count_bits(const uint8_t *q, long n, int64_t *bits) {
    /* eight values at a time: bit b of each byte masked out of a 64-bit word, popcount (a histogram of the values
       would chain its increments through memory, ten times slower) */
    int64_t s[8] = {0};
    long e = 0;
    for (; e + 8 <= n; e += 8) {
        uint64_t w;
        memcpy(&w, q + e, 8);
        for (int b = 0; b < 8; b++) s[b] += __builtin_popcountll(w & (0x0101010101010101ULL << b));
    }
    for (; e < n; e++)
        for (int b = 0; b < 8; b++) s[b] += (q[e] >> b) & 1;
    for (int b = 0; b < 8; b++) bits[b] += s[b];
}

INLINE void quantise_px(const void *v, int vt, long i, int co, const double *bias, const double *theta,
                        const double *inv, int levels, void *q, long qi, int count, int64_t *local) {
    uint8_t *q8 = (uint8_t *)q + qi * co;
    uint16_t *q16 = (uint16_t *)q + qi * co;
    for (int c = 0; c < co; c++) {
        long e = i * co + c;
        double x = (vt == 0 ? (double)((const float *)v)[e]
                    : vt == 1 ? ((const double *)v)[e] : (double)((const int32_t *)v)[e]) + bias[c];
        double f = floor(x * inv[c]);
        double r = x - f * theta[c];
        f += (r >= theta[c]) - (r < 0);
        f = f < 0 ? 0 : (f > levels ? levels : f);
        if (levels < 256) q8[c] = (uint8_t)f; else q16[c] = (uint16_t)f;
    }
    if (levels < 256 && count)
        count_bits(q8, co, local);
}

void bitplane_quantise(const void *v, int vt, long n, int co, const double *bias, const double *theta,
                       const double *inv, int levels, void *q, int threads, long p0, long p1, int64_t *bits) {
    #pragma omp parallel num_threads(threads)
    {
        int64_t local[8] = {0};
        #pragma omp for schedule(static)
        for (long i = 0; i < n; i++)
            quantise_px(v, vt, i, co, bias, theta, inv, levels, q, i, i >= p0 && i < p1, local);
        #pragma omp critical
        for (int b = 0; b < 8; b++) bits[b] += local[b];
    }
}

/* Exact integer convolution of a decoded bit-plane input (the dense path of a bit-plane layer):
   out[oy][ox][c] = bias[c] + sum_{i,j,ci} x[oy*st+i][ox*st+j][ci] * w[i][j][ci][c], in int32.
   xp: the zero-padded input [hp][wp][cin] as int16 (activations q < 2^15), plus 2 spare elements at the end.
   wpk: per tap row i the k*cin weights of that row (j major, then ci: the order of the input's memory) in
   pairs, [k][kp][co][2] int16, kp = ceil(k*cin/2) (a missing last weight is 0). A pair of inputs times a pair
   of weights is one pmaddwd lane; the rows of an output pixel's receptive field are contiguous runs of xp, so
   no im2col copy is made. Exact: every partial sum is bounded by the proved |sum| < 2^31 (checked in Python),
   and a pair's two products (|x| < 2^15, |w| <= 2^7) cannot overflow int32. */
int conv_s16_fast(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

/* Dilation dil > 1 (stride 1, cin even, so no pair straddles two taps): a row's taps are dil pixels apart, so its
   pairs run tap by tap with a jump of (dil - 1) * cin between taps; dil = 1 is one run of all kp pairs. */
INLINE void conv_s16_px(const int16_t *xp, int wp, int cin, const int16_t *wpk, int k, int st, int dil, int oy,
                        int ox, int c_lo, int co, int kp, const int32_t *bias, int32_t *o) {
    long rowpairs = (long)kp * co * 2, jump = (long)(dil - 1) * cin;
    int taps = dil > 1 ? k : 1, ppt = dil > 1 ? cin / 2 : kp;
    for (int c = c_lo; c < co; c++) {
        int32_t s = bias[c];
        for (int i = 0; i < k; i++) {
            const int16_t *a = xp + ((long)(oy * st + i * dil) * wp + (long)ox * st) * cin;
            const int16_t *b = wpk + i * rowpairs + 2 * c;
            for (int t = 0; t < taps; t++, a += jump)
                for (int m = 0; m < ppt; m++, a += 2, b += 2L * co)
                    s += (int32_t)a[0] * b[0] + (int32_t)a[1] * b[1];
        }
        o[c] = s;
    }
}

/* quantise_px for int32 membranes and 8-bit activations, written branch-free over the channels so that the
   compiler vectorises it (the same arithmetic, hence the same values; restrict: the uint8 stores alias nothing,
   and -fno-trapping-math lets floor vectorise) */
INLINE void quantise_row_u8(const int32_t *restrict v, long n, int co, const double *restrict bias,
                            const double *restrict theta, const double *restrict inv, int levels,
                            uint8_t *restrict q, int count, int64_t *local) {
    double top = levels;
    for (long e0 = 0; e0 < n; e0 += co) {
        const int32_t *restrict vr = v + e0;
        uint8_t *restrict qr = q + e0;
        for (int c = 0; c < co; c++) {
            double x = (double)vr[c] + bias[c];
            double f = floor(x * inv[c]);
            double r = x - f * theta[c];
            f += (r >= theta[c] ? 1.0 : 0.0) - (r < 0 ? 1.0 : 0.0);
            f = f < 0 ? 0 : f;
            f = f > top ? top : f;
            qr[c] = (uint8_t)(int32_t)f;
        }
    }
    if (count)
        count_bits(q, n, local);
}

/* The bit-plane neuron applied to one output row of a convolution (int32, [wo][co]) while it is in cache:
   q row oy, and the counts of its bits when count */
INLINE void quantise_row(const int32_t *orow, int oy, int wo, int co, const double *qbias, const double *theta,
                         const double *inv, int levels, void *q, int count, int64_t *local) {
    if (levels < 256)
        quantise_row_u8(orow, (long)wo * co, co, qbias, theta, inv, levels, (uint8_t *)q + (long)oy * wo * co,
                        count, local);
    else
        for (int x = 0; x < wo; x++)
            quantise_px(orow, 2, x, co, qbias, theta, inv, levels, q, (long)oy * wo + x, count, local);
}

#ifdef __AVX2__
#include <immintrin.h>
INLINE __m256i pair(const int16_t *a) {
    int32_t v;
    memcpy(&v, a, 4);
    return _mm256_set1_epi32(v);
}

/* 4 output pixels x 16 channels: 8 accumulators; per input pair 4 broadcasts, 2 weight loads, 8 pmaddwd */
INLINE void conv_s16_tile(const int16_t *xp, int wp, int cin, const int16_t *wpk, int k, int st, int dil, int oy,
                          int ox, int c0, int co, int kp, const int32_t *bias, int32_t *orow) {
    __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00,
            s31 = s00;
    long ps = (long)st * cin, rowpairs = (long)kp * co * 2, jump = (long)(dil - 1) * cin;
    int taps = dil > 1 ? k : 1, ppt = dil > 1 ? cin / 2 : kp;
    for (int i = 0; i < k; i++) {
        const int16_t *a = xp + ((long)(oy * st + i * dil) * wp + (long)ox * st) * cin;
        const int16_t *b = wpk + i * rowpairs + 2 * c0;
        for (int t = 0; t < taps; t++, a += jump)
            for (int m = 0; m < ppt; m++, a += 2, b += 2L * co) {
                __m256i b0 = _mm256_loadu_si256((const __m256i *)b);
                __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + 16));
                __m256i x0 = pair(a), x1 = pair(a + ps), x2 = pair(a + 2 * ps), x3 = pair(a + 3 * ps);
                s00 = _mm256_add_epi32(s00, _mm256_madd_epi16(x0, b0));
                s01 = _mm256_add_epi32(s01, _mm256_madd_epi16(x0, b1));
                s10 = _mm256_add_epi32(s10, _mm256_madd_epi16(x1, b0));
                s11 = _mm256_add_epi32(s11, _mm256_madd_epi16(x1, b1));
                s20 = _mm256_add_epi32(s20, _mm256_madd_epi16(x2, b0));
                s21 = _mm256_add_epi32(s21, _mm256_madd_epi16(x2, b1));
                s30 = _mm256_add_epi32(s30, _mm256_madd_epi16(x3, b0));
                s31 = _mm256_add_epi32(s31, _mm256_madd_epi16(x3, b1));
            }
    }
    __m256i bi0 = _mm256_loadu_si256((const __m256i *)(bias + c0));
    __m256i bi1 = _mm256_loadu_si256((const __m256i *)(bias + c0 + 8));
    int32_t *o = orow + (long)ox * co + c0;
    _mm256_storeu_si256((__m256i *)o, _mm256_add_epi32(s00, bi0));
    _mm256_storeu_si256((__m256i *)(o + 8), _mm256_add_epi32(s01, bi1));
    _mm256_storeu_si256((__m256i *)(o + co), _mm256_add_epi32(s10, bi0));
    _mm256_storeu_si256((__m256i *)(o + co + 8), _mm256_add_epi32(s11, bi1));
    _mm256_storeu_si256((__m256i *)(o + 2 * co), _mm256_add_epi32(s20, bi0));
    _mm256_storeu_si256((__m256i *)(o + 2 * co + 8), _mm256_add_epi32(s21, bi1));
    _mm256_storeu_si256((__m256i *)(o + 3 * co), _mm256_add_epi32(s30, bi0));
    _mm256_storeu_si256((__m256i *)(o + 3 * co + 8), _mm256_add_epi32(s31, bi1));
}
#endif

/* out [ho][wo][co] int32; or, with q != NULL, the bit-plane neuron that follows applied to each row while it is
   in cache (bitplane_quantise's arithmetic: q = clip(floor((row + qbias) / theta), 0, levels), its bits counted
   over output rows r0..r1-1) and out unused */
void conv_s16(const int16_t *xp, int wp, int cin, const int16_t *wpk, int k, int st, int dil, int ho, int wo, int co,
              const int32_t *bias, int32_t *out, int threads, const double *qbias, const double *theta,
              const double *inv, int levels, void *q, int r0, int r1, int64_t *bits) {
    int kp = (k * cin + 1) / 2;
    #pragma omp parallel num_threads(threads)
    {
        int64_t local[8] = {0};
        int32_t *rowbuf = q ? malloc((size_t)wo * co * sizeof(int32_t)) : NULL;
        #pragma omp for schedule(dynamic, 1)
        for (int oy = 0; oy < ho; oy++) {
            int32_t *orow = q ? rowbuf : out + (long)oy * wo * co;
            int ox = 0;
#ifdef __AVX2__
            int c16 = co & ~15;
            if (c16) {
                for (; ox + 4 <= wo; ox += 4) {
                    for (int c0 = 0; c0 < c16; c0 += 16)
                        conv_s16_tile(xp, wp, cin, wpk, k, st, dil, oy, ox, c0, co, kp, bias, orow);
                    for (int p = 0; p < 4 && c16 < co; p++)
                        conv_s16_px(xp, wp, cin, wpk, k, st, dil, oy, ox + p, c16, co, kp, bias,
                                    orow + (long)(ox + p) * co);
                }
            }
#endif
            for (; ox < wo; ox++)
                conv_s16_px(xp, wp, cin, wpk, k, st, dil, oy, ox, 0, co, kp, bias, orow + (long)ox * co);
            if (q)
                quantise_row(orow, oy, wo, co, qbias, theta, inv, levels, q, oy >= r0 && oy < r1, local);
        }
        free(rowbuf);
        #pragma omp critical
        for (int b = 0; b < 8; b++) bits[b] += local[b];
    }
}

/* The same convolution for 8-bit activations (T <= 8) and int8 weights, where the CPU has a dot-product
   instruction: AVX-512 VNNI's vpdpbusd adds four u8 x s8 products to each int32 lane in one instruction, four
   times the work of conv_s16's pmaddwd per instruction and twice per lane. This is what int8 inference engines
   (onnxruntime, oneDNN) run on such CPUs. Exact: each product is below 2^15 in magnitude, the four-product sum
   below 2^17, and the accumulation is int32 wrap-around, so a final sum proved to fit int32 comes out exact.
   wpk: per tap row i the k*cin weights of that row in groups of four, [k][kq][cop][4] int8, kq = ceil(k*cin/4),
   cop = co rounded up to 16 (missing weights 0). xp: the zero-padded input [hp][wp][cin] uint8 plus the spare
   bytes a tile of U8_P pixels reads past the last output pixel (their results are dropped). */
#define U8_P 6
int conv_u8_fast(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    return 1;
#else
    return 0;
#endif
}

/* Dilation dil > 1 (stride 1, cin a multiple of 4, so no group of four straddles two taps): the taps of a row are
   dil pixels apart, so the row's groups run tap by tap with a jump of (dil - 1) * cin between taps; dil = 1 is one
   run of all kq groups (the same loop, no jump). */

INLINE void conv_u8_px(const uint8_t *xp, int wp, int cin, const int8_t *wpk, int k, int st, int dil, int oy,
                       int ox, int co, int cop, int kq, const int32_t *bias, int32_t *o) {
    long rowq = (long)kq * cop * 4, jump = (long)(dil - 1) * cin;
    int taps = dil > 1 ? k : 1, gpt = dil > 1 ? cin / 4 : kq;
    for (int c = 0; c < co; c++) {
        int32_t s = bias[c];
        for (int i = 0; i < k; i++) {
            const uint8_t *a = xp + ((long)(oy * st + i * dil) * wp + (long)ox * st) * cin;
            const int8_t *b = wpk + i * rowq + 4 * c;
            for (int t = 0; t < taps; t++, a += jump)
                for (int m = 0; m < gpt; m++, a += 4, b += 4L * cop)
                    for (int u = 0; u < 4; u++) s += (int32_t)a[u] * b[u];
        }
        o[c] = s;
    }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* U8_P output pixels x NV*16 channels from c0: U8_P*NV accumulators (24 of the 32 registers at NV = 4); per group
   of four inputs NV weight loads, U8_P broadcasts, U8_P*NV vpdpbusd. NV is a literal at every call, so each
   inlined copy keeps its accumulators in registers. Channels from co on are computed (zero weights) but not
   stored. */
INLINE void conv_u8_tile(const uint8_t *xp, int wp, int cin, const int8_t *wpk, int k, int st, int dil, int oy,
                         int ox, int c0, const int NV, int co, int cop, int kq, const int32_t *bias, int32_t *orow) {
    __m512i s[U8_P][4];
    for (int p = 0; p < U8_P; p++)
        for (int v = 0; v < NV; v++) s[p][v] = _mm512_setzero_si512();
    long ps = (long)st * cin, rowq = (long)kq * cop * 4, jump = (long)(dil - 1) * cin;
    int taps = dil > 1 ? k : 1, gpt = dil > 1 ? cin / 4 : kq;
    for (int i = 0; i < k; i++) {
        const uint8_t *a = xp + ((long)(oy * st + i * dil) * wp + (long)ox * st) * cin;
        const int8_t *b = wpk + i * rowq + 4 * c0;
        for (int t = 0; t < taps; t++, a += jump)
            for (int m = 0; m < gpt; m++, a += 4, b += 4L * cop) {
                __m512i w[4];
                for (int v = 0; v < NV; v++) w[v] = _mm512_loadu_si512((const void *)(b + 64 * v));
                for (int p = 0; p < U8_P; p++) {
                    int32_t x4;
                    memcpy(&x4, a + p * ps, 4);
                    __m512i x = _mm512_set1_epi32(x4);
                    for (int v = 0; v < NV; v++) s[p][v] = _mm512_dpbusd_epi32(s[p][v], x, w[v]);
                }
            }
    }
    for (int v = 0; v < NV; v++) {
        int c = c0 + 16 * v, n = co - c;
        __mmask16 mk = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
        __m512i bi = _mm512_maskz_loadu_epi32(mk, bias + c);
        for (int p = 0; p < U8_P; p++)
            _mm512_mask_storeu_epi32(orow + (long)(ox + p) * co + c, mk, _mm512_add_epi32(s[p][v], bi));
    }
}
#endif

/* out [ho][wo][co] int32, or the bit-plane neuron applied row by row as in conv_s16. Each thread computes a row
   into its own buffer (U8_P - 1 pixels and 15 channels of slack for the last tile) and then copies or quantises
   it, so a tile's dropped pixels never touch another row. */
void conv_u8(const uint8_t *xp, int wp, int cin, const int8_t *wpk, int k, int st, int dil, int ho, int wo, int co,
             int cop, const int32_t *bias, int32_t *out, int threads, const double *qbias, const double *theta,
             const double *inv, int levels, void *q, int r0, int r1, int64_t *bits) {
    int kq = (k * cin + 3) / 4;
    #pragma omp parallel num_threads(threads)
    {
        int64_t local[8] = {0};
        int32_t *rowbuf = malloc(((size_t)(wo + U8_P) * co + 16) * sizeof(int32_t));
        #pragma omp for schedule(dynamic, 1)
        for (int oy = 0; oy < ho; oy++) {
            int ox = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
            for (; ox < wo; ox += U8_P) {
                int c0 = 0;
                for (; c0 + 64 <= cop; c0 += 64)
                    conv_u8_tile(xp, wp, cin, wpk, k, st, dil, oy, ox, c0, 4, co, cop, kq, bias, rowbuf);
                switch ((cop - c0) / 16) {
                case 3: conv_u8_tile(xp, wp, cin, wpk, k, st, dil, oy, ox, c0, 3, co, cop, kq, bias, rowbuf); break;
                case 2: conv_u8_tile(xp, wp, cin, wpk, k, st, dil, oy, ox, c0, 2, co, cop, kq, bias, rowbuf); break;
                case 1: conv_u8_tile(xp, wp, cin, wpk, k, st, dil, oy, ox, c0, 1, co, cop, kq, bias, rowbuf); break;
                }
            }
#endif
            for (; ox < wo; ox++)
                conv_u8_px(xp, wp, cin, wpk, k, st, dil, oy, ox, co, cop, kq, bias, rowbuf + (long)ox * co);
            if (q)
                quantise_row(rowbuf, oy, wo, co, qbias, theta, inv, levels, q, oy >= r0 && oy < r1, local);
            else
                memcpy(out + (long)oy * wo * co, rowbuf, (size_t)wo * co * sizeof(int32_t));
        }
        free(rowbuf);
        #pragma omp critical
        for (int b = 0; b < 8; b++) bits[b] += local[b];
    }
}

/* Neuron update alone (currents computed elsewhere): cur [L][n][co] int32 (cur_step = 0 repeats one step),
   v [n][co] int32 updated in place, spk [L][n][co] uint8. Steps t < T only (no MPRN extra step). */
void neuron(const int32_t *cur, long cur_step, int L, long n, int co, int32_t *v, const int32_t *theta,
            int leak, int hard, uint8_t *spk, int threads, long p0, long p1, int64_t *counts) {
    for (int t = 0; t < L; t++) {
        const int32_t *ct = cur + cur_step * t;
        uint8_t *so = spk + (long)t * n * co;
        long cnt = 0;
        #pragma omp parallel for schedule(static) num_threads(threads) reduction(+:cnt)
        for (long i = 0; i < n; i++) {
            long c0 = 0;
            for (int c = 0; c < co; c++) {
                long e = i * co + c;
                int32_t m = v[e];
                if (leak) m -= m >> leak;
                m += ct[e];
                int32_t s = m >= theta[c];
                m = hard ? (s ? 0 : m) : m - (s ? theta[c] : 0);
                v[e] = m;
                so[e] = (uint8_t)s;
                c0 += s;
            }
            if (i >= p0 && i < p1) cnt += c0;
        }
        counts[t] = cnt;
    }
}
"""

_LIB = None
_ERROR = None
_TRIED = False
_INFO: dict = {}

ARCH_FLAGS = ("-march=native", "-mcpu=native")
"""Tried in turn, the first the compiler accepts is kept: GCC/Clang on x86-64 spell it ``-march``, GCC on ARM
accepts both, some ARM compilers only ``-mcpu``; cross compilers reject both (there is no "native" target)."""
OPENMP_FLAG = "-fopenmp"
BASE_FLAGS = ("-O3", "-fno-trapping-math", "-fPIC", "-shared")
"""-fno-trapping-math lets GCC vectorise ``floor`` in the bit-plane quantiser; it changes no value, only whether
floating-point exceptions may be raised (nothing here reads them)."""

_PROBE_SOURCE = """
int probe(int n) {
    int s = 0;
    #pragma omp parallel for reduction(+:s)
    for (int i = 0; i < n; i++) s += i;
    return s;
}
"""


def _cache_dir() -> Path:
    base = os.environ.get("EDGESPIKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgespike")
    return Path(base)


def compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` (split like a shell word list, e.g. ``ccache gcc``), else the first of
    ``cc``, ``gcc``, ``clang`` on the PATH; ``None`` if there is none."""
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    return [found] if found else None


def _reason(stderr: str) -> str:
    """The line of a compiler's output that says why it failed (the first error, not the notes after it)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[-1] if lines else "no message"


def _run(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except OSError as exc:  # the compiler named by CC does not exist or cannot run
        return 127, f"{cmd[0]}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return 124, f"{cmd[0]} did not finish within {timeout:.0f} s"
    return r.returncode, r.stderr + r.stdout


def _identity(cmd: list[str]) -> str:
    """What makes a compiler this compiler: every word's resolved executable with its size and modification time
    (an upgraded or replaced compiler, or a CC wrapper that was edited, gets another identity; no subprocess)."""
    parts = []
    for word in cmd:
        path = shutil.which(word) if os.sep not in word else word
        try:
            real = os.path.realpath(path) if path else word
            st = os.stat(real)
            parts.append(f"{word}={real}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(word)
    return "|".join(parts)


def cpu_id() -> str:
    """The CPU ``-march=native`` compiles for: machine, model and feature flags (``/proc/cpuinfo`` on Linux)."""
    parts = [platform.machine(), platform.processor()]
    try:
        seen = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("vendor_id", "model name", "cpu family", "model", "flags", "features", "cpu implementer",
                       "cpu architecture", "cpu variant", "cpu part") and key not in seen:
                seen.add(key)
                parts.append(line.strip())
    except OSError:
        pass
    return "\n".join(parts)


def _cpu_name(cpu: str) -> str:
    for line in cpu.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return cpu.splitlines()[0] if cpu else "?"


def _extra_flags() -> list[str]:
    return shlex.split(os.environ.get("EDGESPIKE_CFLAGS", ""))


def probe_flags(cmd: list[str]) -> dict:
    """Which optional flags ``cmd`` accepts, each tried on its own on a small OpenMP source (about 50 ms each).

    Returns ``{"version", "flags", "rejected": {flag: reason}}``: the first accepted of :data:`ARCH_FLAGS`, and
    ``-fopenmp`` when it compiles and links (a compiler that rejects ``-march=native`` still gets OpenMP)."""
    rc, out = _run(cmd + ["--version"], timeout=60)
    version = out.strip().splitlines()[0] if rc == 0 and out.strip() else "unknown version"
    flags: list[str] = []
    rejected: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(_PROBE_SOURCE)
        lib = str(Path(tmp) / "probe.so")
        for flag in ARCH_FLAGS:
            rc, out = _run(cmd + ["-fPIC", "-shared", flag, str(src), "-o", lib], timeout=60)
            if rc == 0:
                flags.append(flag)
                break
            rejected[flag] = _reason(out)
        rc, out = _run(cmd + ["-fPIC", "-shared", OPENMP_FLAG, str(src), "-o", lib], timeout=60)
        if rc == 0:
            flags.append(OPENMP_FLAG)
        else:
            rejected[OPENMP_FLAG] = _reason(out)
    return {"version": version, "flags": flags, "rejected": rejected}


def compile_kernel(cmd: list[str], flags: list[str], out: Path, sources: tuple = ()) -> tuple[bool, str]:
    """Compile :data:`C_SOURCE` (plus ``sources``, e.g. a test driver) with ``cmd`` and ``flags`` into ``out``,
    published atomically. Returns ``(ok, reason)``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(C_SOURCE)
        lib = Path(tmp) / out.name
        rc, msg = _run(cmd + list(flags) + [str(src), *map(str, sources), "-o", str(lib)])
        if rc != 0:
            return False, _reason(msg)
        # Atomic publish: concurrent first uses never load a half-written library.
        fd, tmp_out = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
        os.close(fd)
        shutil.copyfile(lib, tmp_out)
        os.chmod(tmp_out, 0o755)
        os.replace(tmp_out, out)
    return True, ""


def plan() -> dict:
    """What :func:`build` would compile, and where: compiler, version, flags (probed once per compiler identity
    and cached), CPU and the library path. The path is keyed by the C source, the compiler's identity and
    version, the flags and the CPU, so a changed compiler, ``CC``, ``EDGESPIKE_CFLAGS`` or CPU builds anew
    instead of reusing a single-threaded or wrong-CPU library. ``{"error": reason}`` without a compiler."""
    cmd = compiler()
    if not cmd:
        return {"error": "no C compiler found (install gcc or clang, or set CC)"}
    ident = _identity(cmd)
    cache = _cache_dir()
    pfile = cache / f"probe-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    probe = None
    try:
        probe = json.loads(pfile.read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(probe, dict) or probe.get("identity") != ident:
        probe = dict(probe_flags(cmd), identity=ident)
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                json.dump(probe, fh)
            os.replace(tmp, pfile)
        except OSError:  # a read-only cache only costs the probe again next time
            pass
    flags = list(BASE_FLAGS) + probe["flags"] + _extra_flags()
    cpu = cpu_id()
    tag = hashlib.sha256("\0".join([C_SOURCE, ident, probe["version"], " ".join(flags), cpu]).encode())
    return {"compiler": cmd, "version": probe["version"], "flags": flags, "rejected": probe["rejected"],
            "openmp": OPENMP_FLAG in flags, "cpu": _cpu_name(cpu),
            "path": str(cache / f"kernel-{tag.hexdigest()[:16]}.so")}


def build(info: dict | None = None) -> dict:
    """Compile the library :func:`plan` describes unless it is cached; returns the plan with ``built`` (compiled
    now) and, on failure, ``error`` (the compiler's reason). If the probed flags fail on the real source, the
    architecture flag and then OpenMP are dropped in turn, each drop recorded in ``rejected``."""
    info = dict(info or plan())
    if "error" in info:
        return info
    path = Path(info["path"])
    info["built"] = False
    if path.exists():
        return info
    flags = list(info["flags"])
    reasons = []
    while True:
        ok, why = compile_kernel(info["compiler"], flags, path)
        if ok:
            break
        reasons.append(why)
        drop = next((f for f in (*ARCH_FLAGS, OPENMP_FLAG) if f in flags), None)
        if drop is None:
            info["error"] = f"compiling the kernel with {' '.join(info['compiler'])} failed: {reasons[0]}"
            return info
        info["rejected"] = dict(info["rejected"], **{drop: why})
        flags.remove(drop)
    info.update(flags=flags, openmp=OPENMP_FLAG in flags, built=True)
    return info


def _open(path: str):
    lib = ctypes.CDLL(path)
    fn = lib.conv_neuron
    fn.restype = ctypes.c_int
    P = ctypes.c_void_p
    I = ctypes.c_int  # noqa: E741
    fn.argtypes = [P, I, ctypes.c_long, I, I, I, I, I, P, I, I, I, P, P, P, I, I, I, P, I, I, I, P]
    nf = lib.neuron
    nf.restype = None
    nf.argtypes = [P, ctypes.c_long, I, ctypes.c_long, I, P, P, I, I, P, I, ctypes.c_long, ctypes.c_long, P]
    lib.kernel_openmp.restype = ctypes.c_int
    lib.kernel_openmp.argtypes = []
    lib.conv_s16_fast.restype = ctypes.c_int
    lib.conv_s16_fast.argtypes = []
    lib.conv_s16.restype = None
    lib.conv_s16.argtypes = [P, I, I, P, I, I, I, I, I, I, P, P, I, P, P, P, I, P, I, I, P]
    lib.conv_u8_fast.restype = ctypes.c_int
    lib.conv_u8_fast.argtypes = []
    lib.conv_u8.restype = None
    lib.conv_u8.argtypes = [P, I, I, P, I, I, I, I, I, I, I, P, P, I, P, P, P, I, P, I, I, P]
    return lib


def load():
    """The compiled kernel library (ctypes), building it on first use; ``None`` if unavailable (the reason is
    :func:`load_error`, the build details :func:`info`)."""
    global _LIB, _ERROR, _TRIED, _INFO
    if _TRIED:
        return _LIB
    _TRIED = True
    if os.environ.get("EDGESPIKE_NO_KERNEL"):
        _ERROR = "disabled by EDGESPIKE_NO_KERNEL"
        return None
    # Idle OpenMP workers sleep instead of spinning: the runtime opens a parallel region per layer and step,
    # and spinning threads would steal the CPU from the caller's other work (and from other processes). Only
    # effective if no library loaded libgomp before (see edgespike.parallel).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        _INFO = build()
        if "error" in _INFO:
            _ERROR = _INFO["error"]
            return None
        _LIB = _open(_INFO["path"])
        _INFO["openmp"] = bool(_LIB.kernel_openmp())
    except OSError as exc:
        _ERROR = f"loading the compiled kernel failed: {exc}"
        _LIB = None
    return _LIB


def load_error() -> str | None:
    """Why :func:`load` returned ``None`` (for error messages)."""
    return _ERROR


def fallback_notice() -> str:
    """One line saying that the slow numpy fallback runs instead of the compiled kernel, and why."""
    return (f"the compiled C kernel is unavailable ({load_error() or 'not built'}); running the numpy fallback, "
            "about 10x slower")


_NOTIFIED = False


def warn_fallback(stacklevel: int = 3) -> None:
    """A ``RuntimeWarning`` with :func:`fallback_notice`, once per process; none when the user disabled the
    kernel (``EDGESPIKE_NO_KERNEL``) or a command already printed the notice (:func:`mark_notified`)."""
    global _NOTIFIED
    if _NOTIFIED or os.environ.get("EDGESPIKE_NO_KERNEL"):
        return
    _NOTIFIED = True
    import warnings

    warnings.warn(fallback_notice(), RuntimeWarning, stacklevel=stacklevel + 1)


def mark_notified() -> None:
    """The fallback notice has reached the user another way (the CLI's line): no Python warning as well."""
    global _NOTIFIED
    _NOTIFIED = True


def info() -> dict:
    """How the kernel :func:`load` returned was built: compiler, version, flags, ``openmp``, rejected flags with
    the compiler's reasons, CPU, library path (empty before :func:`load`)."""
    return dict(_INFO)


def _reset() -> None:
    """Forget the loaded kernel so the next :func:`load` looks again (tests)."""
    global _LIB, _ERROR, _TRIED, _INFO, _NOTIFIED
    _LIB, _ERROR, _TRIED, _INFO, _NOTIFIED = None, None, False, {}, False


MAX_OUT = 64 * 8
"""Output channels the kernel's on-stack accumulator holds (64 vectors of 8 int32)."""


def fits(conv, neuron_info) -> bool:
    """Whether the kernel can run ``conv`` + its neuron exactly: int32 membranes suffice (analyse() bounds them
    to membrane_bits <= 32) and the output channels fit the accumulator."""
    return conv.out_channels <= MAX_OUT


def fits16(weight: np.ndarray) -> bool:
    """16-bit wrap-around accumulation is exact when every output channel's final sum fits int16: with 0/1
    inputs that sum is at most ``sum |w|`` over the fan-in (modular arithmetic makes overflowing partial sums
    harmless)."""
    return int(np.abs(weight.astype(np.int64)).sum(axis=(1, 2, 3)).max()) < 2**15


def build_lut(weight: np.ndarray) -> np.ndarray:
    """Per tap and group of four input channels, the 16 possible weight sums: ``[k*k, C_in/4, 16, C_out']``,
    int16 when :func:`fits16` (C_out padded to 16 lanes), else int32 (padded to 8)."""
    cout, cin, k, _ = weight.shape
    cs = -(-cin // 4) * 4
    small = fits16(weight)
    lanes = 16 if small else 8
    co8 = -(-cout // lanes) * lanes
    w = np.zeros((k * k, cs, co8), np.int64)
    w[:, :cin, :cout] = weight.astype(np.int64).transpose(2, 3, 1, 0).reshape(k * k, cin, cout)
    w = w.reshape(k * k, cs // 4, 4, co8)
    lut = np.zeros((k * k, cs // 4, 16, co8), np.int64)
    for nib in range(16):
        for m in range(4):
            if nib >> (3 - m) & 1:  # index bit 3 - m carries channel m of the group (see nibble() in C)
                lut[:, :, nib] += w[:, :, m]
    return np.ascontiguousarray(lut.astype(np.int16 if small else np.int32))


MIN_PARALLEL = 1 << 16
"""Below this many output values per step a second thread costs more than it saves."""


def threads(work: int = MIN_PARALLEL) -> int:
    """Threads for a kernel call producing ``work`` values per step: the running runtime's setting
    (:func:`edgespike.parallel.kernel_threads`: ``threads=``, ``EDGESPIKE_THREADS`` or the usable CPUs), and 1
    for small calls."""
    if work < MIN_PARALLEL:
        return 1
    from edgespike.parallel import kernel_threads

    return kernel_threads()


def conv_neuron(lib, x: np.ndarray, lut: np.ndarray, conv, neuron, v: np.ndarray, theta: np.ndarray,
                out: np.ndarray | None = None, rows: tuple[int, int] | None = None):
    """Run ``conv`` on binary ``x [L, h, w, C_in]`` (uint8) and update ``neuron``'s membranes ``v [ho, wo, C_out]``
    in place over the L steps. Returns the spikes ``[L, ho, wo, C_out]`` (uint8) and the spike count of each step
    within output rows ``rows`` (default all).

    ``neuron=None`` decodes bit planes instead (the UWD of a bit-plane layer): ``v = 2 v + I[t]`` at every step,
    no firing; the spikes returned are then meaningless and the counts zero."""
    L, h, w, cin = x.shape
    cs = lut.shape[1] * 4
    const = L > 1 and x.strides[0] == 0  # one step standing for all (direct-coded constant input)
    base = x[:1] if const else x
    if base.dtype != np.uint8 or cin != cs:
        padded = np.zeros(base.shape[:3] + (cs,), np.uint8)
        padded[..., :cin] = base
        base = padded
    base = np.ascontiguousarray(base)
    x_step = 0 if const else base.strides[0]
    x = base
    st = conv.stride
    ho, wo = -(-h // st), -(-w // st)
    cout = conv.out_channels
    spk = out if out is not None and out.shape == (L, ho, wo, cout) else np.empty((L, ho, wo, cout), np.uint8)
    bias = np.ascontiguousarray(conv.bias, dtype=np.int32)
    theta = np.ascontiguousarray(theta, dtype=np.int32)
    assert v.dtype == np.int32 and v.flags.c_contiguous and v.shape == (ho, wo, cout)
    lanes = 16 if lut.dtype == np.int16 else 8
    if lut.shape[3] // lanes > 64:
        raise ValueError("too many output channels for the kernel")
    r0, r1 = rows if rows is not None else (0, ho)
    counts = np.zeros(L, np.int64)
    rc = lib.conv_neuron(x.ctypes.data, L, x_step, h, w, cs, conv.kernel, st, lut.ctypes.data, cout,
                         lut.shape[3] // lanes, int(lanes == 16), bias.ctypes.data, v.ctypes.data, theta.ctypes.data,
                         int(neuron.leak_shift) if neuron else 0, int(neuron is not None and neuron.reset == "hard"),
                         int(neuron is None), spk.ctypes.data, threads(ho * wo * cout),
                         r0, r1, counts.ctypes.data)
    if rc != 0:
        raise RuntimeError(f"kernel conv_neuron failed ({rc})")
    return spk, counts


def neuron(lib, cur: np.ndarray, neuron, v: np.ndarray, theta: np.ndarray, out: np.ndarray | None = None,
           rows: tuple[int, int] | None = None):
    """Neuron update over L steps (t < T) for int32 currents ``cur [L, h, w, C]`` (a zero stride on the first axis
    repeats one slice); ``v [h, w, C]`` int32 updated in place. Returns uint8 spikes and the spike count of each
    step within rows ``rows`` (default all)."""
    L = cur.shape[0]
    const = L > 1 and cur.strides[0] == 0
    base = np.ascontiguousarray(cur[:1] if const else cur, dtype=np.int32)
    assert v.dtype == np.int32 and v.flags.c_contiguous and v.shape == cur.shape[1:]
    spk = out if out is not None and out.shape == cur.shape else np.empty(cur.shape, np.uint8)
    n = v.shape[0] * v.shape[1]
    theta = np.ascontiguousarray(theta, dtype=np.int32)
    r0, r1 = rows if rows is not None else (0, v.shape[0])
    counts = np.zeros(L, np.int64)
    lib.neuron(base.ctypes.data, 0 if const else base[0].size, L, n, v.shape[2], v.ctypes.data, theta.ctypes.data,
               int(neuron.leak_shift), int(neuron.reset == "hard"), spk.ctypes.data, threads(v.size),
               r0 * v.shape[1], r1 * v.shape[1], counts.ctypes.data)
    return spk, counts


def pack_s16(weight: np.ndarray) -> np.ndarray:
    """Weights ``[C_out, C_in, k, k]`` (int8 range) in the pairs :func:`conv_int` reads: ``[k][kp][C_out][2]``
    int16, per tap row its ``k * C_in`` weights in the input's memory order (column, then channel), zero-padded to
    an even count."""
    return _pack(weight, 2, 1, np.int16)


def pack_u8(weight: np.ndarray) -> np.ndarray:
    """Weights ``[C_out, C_in, k, k]`` in ``[-128, 127]`` in the groups of four the VNNI kernel (:func:`conv_int`
    with an int8 pack, :func:`u8_fast`) reads: ``[k][kq][C_out'][4]`` int8, ``C_out`` zero-padded to a multiple of
    16 (``C_out'``), per tap row its ``k * C_in`` weights in the input's memory order, zero-padded to a multiple of
    four."""
    return _pack(weight, 4, 16, np.int8)


def _pack(weight: np.ndarray, group: int, lanes: int, dtype) -> np.ndarray:
    cout, cin, k, _ = weight.shape
    kg = -(-(k * cin) // group)
    cop = -(-cout // lanes) * lanes
    rows = np.zeros((k, group * kg, cop), dtype)
    rows[:, :k * cin, :cout] = weight.astype(dtype).transpose(2, 3, 1, 0).reshape(k, k * cin, cout)
    return np.ascontiguousarray(rows.reshape(k, kg, group, cop).transpose(0, 1, 3, 2))


def conv_int(lib, x: np.ndarray, packed: np.ndarray, stride: int, bias: np.ndarray, neuron=None, T: int = 8,
             rows: tuple[int, int] | None = None, dilation: int = 1):
    """Exact "same" convolution (zero padding ``k // 2``) of a non-negative integer input ``x [h, w, C_in]`` with
    packed weights, plus ``bias`` (int32): ``[ho, wo, C_out]`` int32. The caller guarantees, from the proved
    bounds, that every partial sum fits int32. Two kernels, chosen by the pack:

    * :func:`pack_s16` (int16 pairs): inputs below ``2**15`` (a decoded bit-plane activation); fast where
      :func:`s16_fast` (AVX2), elsewhere the runtime uses BLAS instead;
    * :func:`pack_u8` (int8 groups of four): inputs below ``2**8`` (T <= 8); fast where :func:`u8_fast` (AVX-512
      VNNI), where it is about 3x the int16 kernel.

    With a :class:`~edgespike.model.BitPlaneNeuron` ``neuron``, returns instead what :func:`bitplane_quantise`
    returns for the convolution's output (its ``T``-bit values and spikes per step in output rows ``rows``),
    computed row by row while the row is in cache.

    ``dilation > 1`` (stride 1) spaces the taps that far apart (padding ``dilation * (k // 2)``): the kernels read
    them in place when no group of inputs straddles two taps (``C_in`` a multiple of 4 for u8, even for int16);
    otherwise they run on each phase's sub-image (:func:`dilated_by_phase`), ``rows`` mapped into
    each."""
    h, w, cin = x.shape
    u8 = packed.dtype == np.int8
    if dilation > 1 and cin % (4 if u8 else 2):
        return _conv_int_by_phase(lib, x, packed, bias, neuron, T, rows, dilation)
    k, _, cop, _ = packed.shape
    cout = len(bias)
    span = dilation * (k - 1) + 1  # the pixels a window covers along each axis
    p = span // 2
    hp, wp = h + 2 * p, w + 2 * p
    ho, wo = (hp - span) // stride + 1, (wp - span) // stride + 1
    # spare elements past the end: the last group of an odd row length reads up to three past the row (times a
    # zero weight), and the u8 kernel's last tile of 6 pixels reads past the last output pixel (results dropped)
    spare = (8 * stride + span) * cin + 8 if u8 else 2
    flat = np.zeros(hp * wp * cin + spare, np.uint8 if u8 else np.int16)
    flat[:-spare].reshape(hp, wp, cin)[p:p + h, p:p + w] = x
    b = np.ascontiguousarray(bias, dtype=np.int32)
    bits = np.zeros(8, np.int64)
    if neuron is None:
        out = np.empty((ho, wo, cout), np.int32)
        q = qb = th = inv = None
        r0 = r1 = levels = 0
    else:
        out = None
        q = np.empty((ho, wo, cout), np.uint8 if T <= 8 else np.uint16)
        qb = np.ascontiguousarray(neuron.bias, dtype=np.float64)
        th = np.ascontiguousarray(neuron.threshold, dtype=np.float64)
        inv = 1.0 / th
        r0, r1 = rows if rows is not None else (0, ho)
        levels = 2**T - 1

    def ptr(a):
        return None if a is None else a.ctypes.data

    head = (flat.ctypes.data, wp, cin, packed.ctypes.data, k, stride, dilation, ho, wo, cout) + ((cop,) if u8 else ())
    (lib.conv_u8 if u8 else lib.conv_s16)(*head, b.ctypes.data, ptr(out), threads(ho * wo * cout), ptr(qb),
                                           ptr(th), ptr(inv), levels, ptr(q), r0, r1, bits.ctypes.data)
    if neuron is None:
        return out
    return q, _spikes_per_step(bits, T)


def dilated_by_phase(x: np.ndarray, d: int, conv) -> np.ndarray:
    """A stride-1 "same" convolution with taps ``d`` pixels apart, from the undilated one.

    Output pixel ``(y, x)`` reads only pixels of its own phase ``(y mod d, x mod d)``, and those are neighbours in
    the phase's sub-image ``x[:, a::d, b::d]``, whose zero padding is the frame's. So ``conv(part, a, b)`` runs
    undilated on each of the d * d sub-images ``part [L, h', w', C]`` (strided views) and the results are
    interleaved back, exactly (TensorFlow's space-to-batch form of atrous convolution)."""
    L, h, w = x.shape[:3]
    out = None
    for a in range(min(d, h)):
        for b in range(min(d, w)):
            y = conv(x[:, a::d, b::d], a, b)  # a view: the convolutions copy it into their padded buffers
            if out is None:
                out = np.empty((L, h, w) + y.shape[3:], y.dtype)
            out[:, a::d, b::d] = y
    return out


def _conv_int_by_phase(lib, x, packed, bias, neuron, T, rows, d):
    if neuron is None:
        return dilated_by_phase(x[None], d, lambda part, a, b: conv_int(lib, part[0], packed, 1, bias)[None])[0]
    r0, r1 = rows if rows is not None else (0, x.shape[0])
    spikes = None if T > 8 else np.zeros(T, np.int64)

    def quantised(part, a, b):
        # output row y = a + d * r of phase a lies in [r0, r1) for r in [ceil((r0 - a) / d), ceil((r1 - a) / d))
        rows_part = (max(0, -(-(r0 - a) // d)), max(0, -(-(r1 - a) // d)))
        q, counts = conv_int(lib, part[0], packed, 1, bias, neuron, T, rows_part)
        if spikes is not None:
            spikes[:] += counts
        return q[None]

    return dilated_by_phase(x[None], d, quantised)[0], spikes


def s16_fast(lib) -> bool:
    """Whether :func:`conv_int` was compiled with its vector path (AVX2)."""
    return bool(lib.conv_s16_fast())


def u8_fast(lib) -> bool:
    """Whether the u8 x s8 kernel (:func:`pack_u8` weights) was compiled with its dot-product path (AVX-512
    VNNI)."""
    return bool(lib.conv_u8_fast())


def bitplane_quantise(lib, v: np.ndarray, bias: np.ndarray, theta: np.ndarray, T: int,
                      rows: tuple[int, int] | None = None):
    """A bit-plane layer's output for decoded membranes ``v [h, w, C]`` (float32, float64 or int32 holding exact
    integers): ``q = clip(floor((v + bias) / theta), 0, 2**T - 1)`` (uint8 for T <= 8, else uint16), and the
    number of spikes of each step ``t`` (bit ``T-1-t`` of q) within rows ``rows`` (default all; T <= 8 only,
    ``None`` otherwise)."""
    fn = lib.bitplane_quantise
    if fn.argtypes is None:
        P, I, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long  # noqa: E741
        fn.restype = None
        fn.argtypes = [P, I, L, I, P, P, P, I, P, I, L, L, P]
    v = np.ascontiguousarray(v)
    kinds = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.int32): 2}
    if v.dtype not in kinds:
        v = v.astype(np.float64)
    h, w, co = v.shape
    q = np.empty(v.shape, np.uint8 if T <= 8 else np.uint16)
    b = np.ascontiguousarray(bias, dtype=np.float64)
    th = np.ascontiguousarray(theta, dtype=np.float64)
    inv = 1.0 / th
    r0, r1 = rows if rows is not None else (0, h)
    bits = np.zeros(8, np.int64)
    fn(v.ctypes.data, kinds[v.dtype], h * w, co, b.ctypes.data, th.ctypes.data, inv.ctypes.data, 2**T - 1,
       q.ctypes.data, threads(v.size), r0 * w, r1 * w, bits.ctypes.data)
    return q, _spikes_per_step(bits, T)


def _spikes_per_step(bits: np.ndarray, T: int) -> np.ndarray | None:
    """Spikes of each step ``t`` from the kernels' counts of the values of q with bit b set (step t emits bit
    ``T-1-t``); ``None`` for T > 8: the kernels count the bits of 8-bit values only."""
    if T > 8:
        return None
    return bits[T - 1::-1].copy()
