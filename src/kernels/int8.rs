//! Integer GEMM for int8 inference: `u8` activations × `i8` weights, accumulated exactly in
//! `i32`. Weights are packed once into blocks of 16 output channels × 4 consecutive inputs
//! (64 bytes, one AVX-512 register), so that one `vpdpbusd` multiplies a broadcast group of
//! 4 activation bytes with 16 output channels and adds the 4 products into 16 `i32` lanes.
//!
//! Three implementations compute the same integers: AVX-512 VNNI, AVX2 (widening to `i16`
//! and `vpmaddwd`, no saturation), and a portable loop; the fastest the CPU supports is
//! picked at run time. Integer arithmetic is exact, so all three agree bit for bit.

use serde::{Deserialize, Serialize};

/// Output channels per packed block.
pub const BLOCK: usize = 16;
/// Inputs per packed group (one `i32` lane of `vpdpbusd`).
pub const GROUP: usize = 4;

/// Weights `[n_out, k]` packed for [`gemm_u8i8`].
#[derive(Debug, Clone, PartialEq)]
pub struct PackedI8 {
    /// Output channels.
    pub n_out: usize,
    /// Inputs per channel.
    pub k: usize,
    /// Groups of 4 inputs (`ceil(k / 4)`).
    pub k4: usize,
    /// Blocks of 16 outputs, rounded up to an even number (the kernel takes two at a time).
    pub blocks: usize,
    /// `blocks * k4 * 64` bytes; padding is zero.
    pub data: Vec<i8>,
    /// Sum of each channel's weights (for the activation zero-point correction).
    pub row_sums: Vec<i32>,
}

impl PackedI8 {
    /// Packs row-major `w` (`n_out` rows of `k` weights).
    pub fn pack(w: &[i8], n_out: usize, k: usize) -> PackedI8 {
        assert_eq!(w.len(), n_out * k, "weight buffer size");
        let k4 = k.div_ceil(GROUP);
        let blocks = n_out.div_ceil(BLOCK).div_ceil(2) * 2;
        let mut data = vec![0i8; blocks * k4 * 64];
        for o in 0..n_out {
            let (blk, lane) = (o / BLOCK, o % BLOCK);
            for i in 0..k {
                let (kk, j) = (i / GROUP, i % GROUP);
                data[(blk * k4 + kk) * 64 + lane * GROUP + j] = w[o * k + i];
            }
        }
        let row_sums = (0..n_out)
            .map(|o| w[o * k..(o + 1) * k].iter().map(|&v| v as i32).sum())
            .collect();
        PackedI8 {
            n_out,
            k,
            k4,
            blocks,
            data,
            row_sums,
        }
    }

    /// Padded input width: activation rows must have this stride.
    pub fn k_padded(&self) -> usize {
        self.k4 * GROUP
    }

    /// Padded output width: the stride of the `i32` result rows.
    pub fn n_padded(&self) -> usize {
        self.blocks * BLOCK
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 VNNI `vpdpbusd`.
    Vnni,
    /// AVX2 `vpmaddwd` on widened values.
    Avx2,
    /// Portable loop.
    Portable,
}

impl Kernel {
    /// The best kernel this CPU runs, within the switches of [`super::cpu`]
    /// (`DISTILLERY_NO_AVX512` keeps AVX2, `DISTILLERY_PORTABLE` the portable loop).
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            let c = super::cpu();
            if c.avx512vnni {
                return Kernel::Vnni;
            }
            if c.avx2 {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn available(&self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::cpu().avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => Kernel::detect() == Kernel::Vnni,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `out[r, o] = Σ_i x[r, i] · w[o, i]` for `rows` rows of `x` (stride `w.k_padded()`, padding
/// arbitrary because the packed weights are zero there); `out` has stride `w.n_padded()`.
pub fn gemm_u8i8(kernel: Kernel, x: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
    let kp = w.k_padded();
    let np = w.n_padded();
    assert!(x.len() >= rows * kp, "activation buffer too small");
    assert!(out.len() >= rows * np, "output buffer too small");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni if kernel.available() => {
            // SAFETY: the CPU supports AVX-512 F/BW/VNNI (checked above); all indexing stays
            // inside the buffers whose sizes are asserted above.
            unsafe { x86::gemm_vnni(x, rows, w, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Vnni if Kernel::Avx2.available() => {
            // SAFETY: the CPU supports AVX2; buffer sizes are asserted above.
            unsafe { x86::gemm_avx2(x, rows, w, out) }
        }
        _ => gemm_portable(x, rows, w, out),
    }
}

fn gemm_portable(x: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
    let kp = w.k_padded();
    let np = w.n_padded();
    for r in 0..rows {
        let xr = &x[r * kp..(r + 1) * kp];
        for blk in 0..w.blocks {
            let mut acc = [0i32; BLOCK];
            let wb = &w.data[blk * w.k4 * 64..(blk + 1) * w.k4 * 64];
            for kk in 0..w.k4 {
                let xs = &xr[kk * GROUP..kk * GROUP + GROUP];
                let wg = &wb[kk * 64..kk * 64 + 64];
                for (lane, a) in acc.iter_mut().enumerate() {
                    let wl = &wg[lane * GROUP..lane * GROUP + GROUP];
                    *a += xs[0] as i32 * wl[0] as i32
                        + xs[1] as i32 * wl[1] as i32
                        + xs[2] as i32 * wl[2] as i32
                        + xs[3] as i32 * wl[3] as i32;
                }
            }
            out[r * np + blk * BLOCK..r * np + (blk + 1) * BLOCK].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // register tiles: index loops over const-size arrays
mod x86 {
    use super::{PackedI8, BLOCK, GROUP};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn bcast4(x: *const u8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(x as *const i32))
    }

    /// `MR` rows × 32 outputs per micro-tile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_vnni<const MR: usize>(
        x: *const u8,
        kp: usize,
        w0: *const i8,
        w1: *const i8,
        k4: usize,
        out: *mut i32,
        np: usize,
    ) {
        let mut a0 = [_mm512_setzero_si512(); MR];
        let mut a1 = [_mm512_setzero_si512(); MR];
        for kk in 0..k4 {
            let v0 = _mm512_loadu_si512(w0.add(kk * 64) as *const _);
            let v1 = _mm512_loadu_si512(w1.add(kk * 64) as *const _);
            for i in 0..MR {
                let xb = bcast4(x.add(i * kp + kk * GROUP));
                a0[i] = _mm512_dpbusd_epi32(a0[i], xb, v0);
                a1[i] = _mm512_dpbusd_epi32(a1[i], xb, v1);
            }
        }
        for i in 0..MR {
            _mm512_storeu_si512(out.add(i * np) as *mut _, a0[i]);
            _mm512_storeu_si512(out.add(i * np + BLOCK) as *mut _, a1[i]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn gemm_vnni(x: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
        let kp = w.k_padded();
        let np = w.n_padded();
        let stride = w.k4 * 64;
        // Panels of rows share each pair of weight blocks while it is hot in L1/L2.
        const PANEL: usize = 64;
        let mut p0 = 0;
        while p0 < rows {
            let p1 = (p0 + PANEL).min(rows);
            let mut blk = 0;
            while blk < w.blocks {
                let w0 = w.data.as_ptr().add(blk * stride);
                let w1 = w.data.as_ptr().add((blk + 1) * stride);
                let mut r = p0;
                while r < p1 {
                    let mr = (p1 - r).min(8);
                    let xp = x.as_ptr().add(r * kp);
                    let op = out.as_mut_ptr().add(r * np + blk * BLOCK);
                    match mr {
                        8 => tile_vnni::<8>(xp, kp, w0, w1, w.k4, op, np),
                        7 => tile_vnni::<7>(xp, kp, w0, w1, w.k4, op, np),
                        6 => tile_vnni::<6>(xp, kp, w0, w1, w.k4, op, np),
                        5 => tile_vnni::<5>(xp, kp, w0, w1, w.k4, op, np),
                        4 => tile_vnni::<4>(xp, kp, w0, w1, w.k4, op, np),
                        3 => tile_vnni::<3>(xp, kp, w0, w1, w.k4, op, np),
                        2 => tile_vnni::<2>(xp, kp, w0, w1, w.k4, op, np),
                        _ => tile_vnni::<1>(xp, kp, w0, w1, w.k4, op, np),
                    }
                    r += mr;
                }
                blk += 2;
            }
            p0 = p1;
        }
    }

    /// AVX2: per group of 4 inputs, 16 channels = 64 weight bytes = four 16-byte quarters,
    /// each widened to 16 × i16 and multiplied with the 4 activations (as i16 pairs) by
    /// `vpmaddwd` into 8 × i32 partial sums (two per channel), folded pairwise at the end.
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2<const MR: usize>(
        x: *const u8,
        kp: usize,
        wb: *const i8,
        k4: usize,
        out: *mut i32,
        np: usize,
    ) {
        let mut acc = [[_mm256_setzero_si256(); 4]; MR];
        for kk in 0..k4 {
            let g = wb.add(kk * 64);
            let wv = [
                _mm256_cvtepi8_epi16(_mm_loadu_si128(g as *const _)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(g.add(16) as *const _)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(g.add(32) as *const _)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(g.add(48) as *const _)),
            ];
            for i in 0..MR {
                let xp = x.add(i * kp + kk * GROUP);
                let xv = _mm256_cvtepu8_epi16(_mm_set1_epi32(std::ptr::read_unaligned(
                    xp as *const i32,
                )));
                for q in 0..4 {
                    acc[i][q] = _mm256_add_epi32(acc[i][q], _mm256_madd_epi16(xv, wv[q]));
                }
            }
        }
        for i in 0..MR {
            for h in 0..2 {
                // acc[q] holds, for channels 4q..4q+4, two partial sums each (in order);
                // hadd folds pairs: hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, ...].
                let s = _mm256_hadd_epi32(acc[i][2 * h], acc[i][2 * h + 1]);
                // s = [c0 c1 | c4 c5 | c2 c3 | c6 c7] in 128-bit halves → reorder.
                let s = _mm256_permute4x64_epi64(s, 0b11_01_10_00);
                _mm256_storeu_si256(out.add(i * np + h * 8) as *mut _, s);
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn gemm_avx2(x: &[u8], rows: usize, w: &PackedI8, out: &mut [i32]) {
        let kp = w.k_padded();
        let np = w.n_padded();
        let stride = w.k4 * 64;
        let mut r = 0;
        while r < rows {
            let mr = (rows - r).min(2);
            let xp = x.as_ptr().add(r * kp);
            for blk in 0..w.blocks {
                let wb = w.data.as_ptr().add(blk * stride);
                let op = out.as_mut_ptr().add(r * np + blk * BLOCK);
                if mr == 2 {
                    tile_avx2::<2>(xp, kp, wb, w.k4, op, np);
                } else {
                    tile_avx2::<1>(xp, kp, wb, w.k4, op, np);
                }
            }
            r += mr;
        }
    }
}

/// Per-tensor asymmetric `u8` quantization of an activation: `x ≈ scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActQuant {
    /// Step size.
    pub scale: f32,
    /// The `u8` code of 0.0.
    pub zero_point: u8,
}

impl ActQuant {
    /// From an observed range (widened to contain 0, so that zero is exact).
    pub fn from_range(lo: f32, hi: f32) -> ActQuant {
        let lo = lo.min(0.0);
        let hi = hi.max(0.0);
        let scale = if hi - lo > 1e-12 {
            (hi - lo) / 255.0
        } else {
            1.0
        };
        let zero_point = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActQuant { scale, zero_point }
    }

    /// Quantizes one value (round half to even, as ONNX QuantizeLinear).
    #[inline]
    pub fn quantize(&self, v: f32, inv_scale: f32) -> u8 {
        ((v * inv_scale).round_ties_even() + self.zero_point as f32).clamp(0.0, 255.0) as u8
    }
}

/// `1.5 · 2²³`: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest
/// integer, ties to even (the default IEEE rounding), without a libm call, so the loops below
/// vectorize.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn round_even(v: f32) -> f32 {
    // Values outside ±2²² are clamped to the u8 range afterwards anyway.
    let v = v.clamp(-4_000_000.0, 4_000_000.0);
    (v + ROUND_MAGIC) - ROUND_MAGIC
}

#[inline(always)]
fn quantize_row_generic(x: &[f32], a: ActQuant, dst: &mut [u8]) {
    let inv = 1.0 / a.scale;
    let z = a.zero_point as f32;
    for (d, &v) in dst.iter_mut().zip(x) {
        // Clamped first, so the integer conversion is exact (and vectorizes).
        *d = (round_even(v * inv) + z).clamp(0.0, 255.0) as i32 as u8;
    }
}

#[inline(always)]
fn requantize_row_generic(acc: &[i32], mult: &[f32], bias: &[f32], a: ActQuant, dst: &mut [u8]) {
    let inv = 1.0 / a.scale;
    let z = a.zero_point as f32;
    for (((d, &s), &m), &b) in dst.iter_mut().zip(acc).zip(mult).zip(bias) {
        let y = (s as f32 * m + b).max(0.0);
        *d = (round_even(y * inv) + z).clamp(z, 255.0) as i32 as u8;
    }
}

/// Clamp bound before the f32 → i32 conversion (far outside the u8 range, far inside i32's).
#[cfg(target_arch = "x86_64")]
const CONVERT_BOUND: f32 = 1.0e6;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], a: ActQuant, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = dst.len().min(x.len());
    let (inv, lo, hi, zv) = quant_consts(a);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), inv);
        let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
        // cvtps rounds to nearest, ties to even (the default MXCSR mode); packus saturates
        // to [0, 255].
        let q = _mm256_add_epi32(_mm256_cvtps_epi32(v), zv);
        store_u8x8(q, dst.as_mut_ptr().add(i));
        i += 8;
    }
    quantize_row_generic(&x[i..n], a, &mut dst[i..n]);
}

/// Broadcast constants of u8 quantization: `1/scale`, the conversion clamp bounds, the zero
/// point.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn quant_consts(
    a: ActQuant,
) -> (
    std::arch::x86_64::__m256,
    std::arch::x86_64::__m256,
    std::arch::x86_64::__m256,
    std::arch::x86_64::__m256i,
) {
    use std::arch::x86_64::*;
    (
        _mm256_set1_ps(1.0 / a.scale),
        _mm256_set1_ps(-CONVERT_BOUND),
        _mm256_set1_ps(CONVERT_BOUND),
        _mm256_set1_epi32(a.zero_point as i32),
    )
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_u8x8(q: std::arch::x86_64::__m256i, dst: *mut u8) {
    use std::arch::x86_64::*;
    // Signed saturation to i16, then unsigned saturation to u8: exact clamping to [0, 255].
    let w16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    let b8 = _mm_packus_epi16(w16, w16);
    _mm_storel_epi64(dst as *mut __m128i, b8);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn requantize_row_avx2(
    acc: &[i32],
    mult: &[f32],
    bias: &[f32],
    a: ActQuant,
    dst: &mut [u8],
) {
    use std::arch::x86_64::*;
    let n = dst.len().min(acc.len()).min(mult.len()).min(bias.len());
    let (inv, lo, hi, zv) = quant_consts(a);
    let mut i = 0;
    while i + 8 <= n {
        let s = _mm256_cvtepi32_ps(_mm256_loadu_si256(acc.as_ptr().add(i) as *const __m256i));
        let y = _mm256_fmadd_ps(
            s,
            _mm256_loadu_ps(mult.as_ptr().add(i)),
            _mm256_loadu_ps(bias.as_ptr().add(i)),
        );
        let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(y, inv), lo), hi);
        // ReLU: a negative value quantizes below the zero point; max restores it.
        let q = _mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(v), zv), zv);
        store_u8x8(q, dst.as_mut_ptr().add(i));
        i += 8;
    }
    requantize_row_generic(&acc[i..n], &mult[i..n], &bias[i..n], a, &mut dst[i..n]);
}

/// Quantizes one row of activations to u8 (vectorized with AVX2 where [`super::cpu`] allows).
pub fn quantize_row(x: &[f32], a: ActQuant, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu().avx2 {
        // SAFETY: the CPU supports AVX2 and FMA (`cpu()` checked them).
        return unsafe { quantize_row_avx2(x, a, dst) };
    }
    quantize_row_generic(x, a, dst)
}

/// `dst[o] = quantize(relu(acc[o] · mult[o] + bias[o]))` for one row.
pub fn requantize_row(acc: &[i32], mult: &[f32], bias: &[f32], a: ActQuant, dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu().avx2 {
        // SAFETY: the CPU supports AVX2 and FMA (`cpu()` checked them).
        return unsafe { requantize_row_avx2(acc, mult, bias, a, dst) };
    }
    requantize_row_generic(acc, mult, bias, a, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_requantization_matches_the_scalar_definition() {
        let mut rng = crate::rng::Rng::new(3);
        let a = ActQuant::from_range(-0.7, 5.3);
        let n = 37;
        // Values on exact rounding ties, large magnitudes and ordinary values.
        let acc: Vec<i32> = (0..n)
            .map(|i| match i % 3 {
                0 => (rng.below(2_000_001) as i32) - 1_000_000,
                1 => i32::MAX / 3 * if i % 2 == 0 { 1 } else { -1 },
                _ => (i as i32) * 7,
            })
            .collect();
        let mult: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 2 { a.scale * 0.5 } else { 1e-5 })
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| (i as f32) * 0.01 - 0.1).collect();
        let mut fast = vec![0u8; n];
        let mut slow = vec![0u8; n];
        requantize_row(&acc, &mult, &bias, a, &mut fast);
        requantize_row_generic(&acc, &mult, &bias, a, &mut slow);
        assert_eq!(fast, slow);
        let x: Vec<f32> = (0..n).map(|i| (i as f32 - 10.0) * a.scale * 0.5).collect();
        quantize_row(&x, a, &mut fast);
        quantize_row_generic(&x, a, &mut slow);
        assert_eq!(fast, slow);
        for (q, v) in slow.iter().zip(&x) {
            assert_eq!(*q, a.quantize(*v, 1.0 / a.scale));
        }
    }

    #[test]
    fn zero_is_exact_in_activation_quantization() {
        for (lo, hi) in [(-1.3f32, 2.0f32), (0.0, 5.0), (0.5, 3.0), (-2.0, -1.0)] {
            let a = ActQuant::from_range(lo, hi);
            let q = a.quantize(0.0, 1.0 / a.scale);
            assert_eq!(q, a.zero_point);
        }
    }
    use crate::rng::Rng;

    fn naive(x: &[u8], rows: usize, kp: usize, w: &[i8], n: usize, k: usize) -> Vec<i32> {
        let mut out = vec![0; rows * n];
        for r in 0..rows {
            for o in 0..n {
                out[r * n + o] = (0..k)
                    .map(|i| x[r * kp + i] as i32 * w[o * k + i] as i32)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_naive_integer_product() {
        let mut rng = Rng::new(7);
        for &(rows, n, k) in &[(1, 10, 7), (5, 33, 64), (9, 50, 131), (4, 16, 4), (3, 1, 1)] {
            let w: Vec<i8> = (0..n * k)
                .map(|_| (rng.below(255) as i32 - 127) as i8)
                .collect();
            let p = PackedI8::pack(&w, n, k);
            let kp = p.k_padded();
            let mut x = vec![0u8; rows * kp];
            for r in 0..rows {
                for i in 0..k {
                    x[r * kp + i] = rng.below(256) as u8;
                }
            }
            let want = naive(&x, rows, kp, &w, n, k);
            for kern in [Kernel::Portable, Kernel::Avx2, Kernel::Vnni] {
                if !kern.available() {
                    continue;
                }
                let np = p.n_padded();
                let mut out = vec![0; rows * np];
                gemm_u8i8(kern, &x, rows, &p, &mut out);
                for r in 0..rows {
                    assert_eq!(
                        &out[r * np..r * np + n],
                        &want[r * n..(r + 1) * n],
                        "{kern:?} rows={rows} n={n} k={k} row {r}"
                    );
                }
            }
        }
        // Extreme values: 255 × ±127 summed over many inputs must not saturate.
        let (n, k) = (16, 1024);
        let w = vec![-127i8; n * k];
        let p = PackedI8::pack(&w, n, k);
        let x = vec![255u8; p.k_padded()];
        for kern in [Kernel::Portable, Kernel::Avx2, Kernel::Vnni] {
            if kern.available() {
                let mut out = vec![0; p.n_padded()];
                gemm_u8i8(kern, &x, 1, &p, &mut out);
                assert!(out[..n].iter().all(|&v| v == -255 * 127 * 1024), "{kern:?}");
            }
        }
    }
}
