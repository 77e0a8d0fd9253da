//! bf16 matrix products, the opt-in precision `precision = "bf16"`: both operands rounded to
//! bfloat16 (round to nearest even), products exact, sums in f32 — the arithmetic of PyTorch's
//! CPU autocast to bf16. Master weights, activations and gradients stay f32; only the
//! operands of a product are rounded.
//!
//! With AVX-512 BF16 (chosen at run time): both operands packed as bf16 pairs (two
//! consecutive k per 32-bit lane), and a micro-kernel of up to 12 rows × 32 columns that adds
//! `VDPBF16PS` products into 24 f32 registers, over equal blocks of at most 512 k pairs; each
//! column panel of the right operand is packed by the thread that multiplies it, while it is
//! in cache, and row-major operands are packed through an in-register transpose. Elsewhere, the portable path: the operands rounded
//! to bf16 into f32 buffers and the f32 GEMM, the same products summed in another order
//! (agreement within float rounding of the sums, tested).
//!
//! AMX tiles (`TDPBF16PS`) are not used: stable Rust has no AMX intrinsics, and no machine
//! with AMX was available to test inline assembly on.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// The precision of the dense layers' matrix products in training (`train.precision`); the
/// precision a model is stored and run in is `compress::quant::Precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatmulPrecision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 operands, f32 sums (autocast-style mixed precision).
    Bf16,
}

impl MatmulPrecision {
    /// Whether this is the default (f32), to keep it out of saved configs.
    pub fn is_f32(&self) -> bool {
        *self == MatmulPrecision::F32
    }
    /// `f32` or `bf16`.
    pub fn name(&self) -> &'static str {
        match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Bf16 => "bf16",
        }
    }
}

/// Rows of the left operand per micro-kernel (24 accumulators; 8 and 14 measured slower).
const MR: usize = 12;
/// Columns of the right operand per micro-kernel (two 16-lane registers).
const NR: usize = 32;
/// At most this many k pairs per block (a right panel block of `KCP · NR · 4` = 64 KiB, L2):
/// each further block writes the outputs once more, which costs more than the block's L1
/// misses (1024³: one block of 512 is 2.5% faster than two of 256; 128 is slower still).
const KCP: usize = 512;

/// The bits of `x` rounded to bf16, in the low half: round to nearest even, NaN stays a
/// (quiet) NaN, subnormals become zero of the same sign — bit for bit what `VCVTNEPS2BF16`
/// does, so the portable and native paths round alike.
#[inline(always)]
pub fn round_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else if b & 0x7f80_0000 == 0 {
        (b >> 16) & 0x8000
    } else {
        r
    }
}

/// `x` rounded to bf16, as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    widen(round_bits(x) as u16)
}

/// The f32 of a bf16 value's bits (exact).
#[inline(always)]
pub fn widen(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Whether the AVX-512 BF16 kernel runs here (not under `DISTILLERY_NO_AVX512` or
/// `DISTILLERY_PORTABLE`, which keep the portable path; see [`super::cpu`]).
pub fn native() -> bool {
    super::cpu().avx512bf16
}

/// The path bf16 products take here: `avx512-bf16` or `portable`.
pub fn path() -> &'static str {
    if native() {
        "avx512-bf16"
    } else {
        "portable"
    }
}

/// A right operand (`k × n`) packed once, for products with many left operands (inference).
#[derive(Debug, Clone)]
pub struct PackedRhs {
    k: usize,
    n: usize,
    /// Native: pairs, panel-major (empty on the portable path).
    pairs: Vec<u32>,
    /// Portable: the bf16-rounded values, row-major `k × n` (empty on the native path).
    rounded: Vec<f32>,
}

impl PackedRhs {
    /// Packs a row-major `k × n` matrix.
    pub fn new(w: &[f32], k: usize, n: usize) -> PackedRhs {
        Self::on(native(), w, k, n)
    }
    fn on(nat: bool, w: &[f32], k: usize, n: usize) -> PackedRhs {
        assert!(w.len() >= k * n);
        if nat {
            let mut pairs = Vec::new();
            pack(nat, &mut pairs, w, n, 1, k, n, NR);
            PackedRhs {
                k,
                n,
                pairs,
                rounded: Vec::new(),
            }
        } else {
            PackedRhs {
                k,
                n,
                pairs: Vec::new(),
                rounded: w[..k * n].iter().map(|&v| round(v)).collect(),
            }
        }
    }
    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

thread_local! {
    static LHS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static RHS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `dst[m×n] = (read ? dst : 0) + bf16(lhs) · bf16(rhs)`, strides as
/// [`super::gemm::matmul`]; multi-threaded when large enough.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    read: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    super::gemm::profile::timed(m, n, k, || {
        matmul_on(
            native(),
            dst,
            m,
            n,
            k,
            read,
            lhs,
            lhs_rs,
            lhs_cs,
            rhs,
            rhs_rs,
            rhs_cs,
        )
    });
}

/// [`matmul`] on the native path (`nat`) or the portable one.
#[allow(clippy::too_many_arguments)]
fn matmul_on(
    nat: bool,
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    read: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &[f32],
    rhs_rs: usize,
    rhs_cs: usize,
) {
    super::gemm::check_operands(
        dst.len(),
        m,
        n,
        k,
        (lhs.len(), lhs_rs, lhs_cs),
        (rhs.len(), rhs_rs, rhs_cs),
    );
    if m == 0 || n == 0 {
        return;
    }
    if !nat {
        let a = rounded(lhs, m, k, lhs_rs, lhs_cs);
        let b = rounded(rhs, k, n, rhs_rs, rhs_cs);
        super::gemm::matmul(dst, m, n, k, read, &a, k, 1, &b, n, 1);
        return;
    }
    product(
        dst,
        m,
        n,
        k,
        read,
        Lhs::F32(lhs, lhs_rs, lhs_cs),
        Rhs::Raw(rhs, rhs_rs, rhs_cs),
    );
}

/// `dst[m×n] = (read ? dst : 0) + bf16(lhs) · rhs` with a packed right operand.
pub fn matmul_packed(
    dst: &mut [f32],
    m: usize,
    read: bool,
    lhs: &[f32],
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: &PackedRhs,
) {
    let (k, n) = (rhs.k, rhs.n);
    // The packed operand is whole by construction (k × n, contiguous).
    super::gemm::check_operands(
        dst.len(),
        m,
        n,
        k,
        (lhs.len(), lhs_rs, lhs_cs),
        (k * n, n, 1),
    );
    if m == 0 || n == 0 {
        return;
    }
    if rhs.pairs.is_empty() {
        let a = rounded(lhs, m, k, lhs_rs, lhs_cs);
        super::gemm::matmul(dst, m, n, k, read, &a, k, 1, &rhs.rounded, n, 1);
        return;
    }
    product(
        dst,
        m,
        n,
        k,
        read,
        Lhs::F32(lhs, lhs_rs, lhs_cs),
        Rhs::Packed(&rhs.pairs),
    );
}

/// `dst[m×n] = (read ? dst : 0) + lhs · rhs` for operands already in bf16 (their bits,
/// row-major `m × k` and `k × n`): nothing is rounded, only packed.
pub fn matmul_bits(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    read: bool,
    lhs: &[u16],
    rhs: &[u16],
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    if m == 0 || n == 0 {
        return;
    }
    if !native() {
        let f = |b: &[u16]| -> Vec<f32> { b.iter().map(|&v| widen(v)).collect() };
        let (a, b) = (f(&lhs[..m * k]), f(&rhs[..k * n]));
        super::gemm::matmul(dst, m, n, k, read, &a, k, 1, &b, n, 1);
        return;
    }
    product(dst, m, n, k, read, Lhs::Bits(lhs), Rhs::Bits(rhs));
}

/// One panel of bf16 bits packed as pairs, as [`pack_panel`] packs f32 values.
#[inline(always)]
fn pack_bits_body(
    d: &mut [u32],
    src: &[u16],
    w: usize,
    os: usize,
    k: usize,
    ks: usize,
    block: usize,
) {
    let kp = k.div_ceil(2);
    if os == 1 {
        // Contiguous along the outer index: two k rows interleaved (vectorises).
        for (p, d) in d[..kp * block].chunks_exact_mut(block).enumerate() {
            let r0 = &src[2 * p * ks..][..w];
            if 2 * p + 1 < k {
                let r1 = &src[(2 * p + 1) * ks..][..w];
                for ((d, &a), &b) in d.iter_mut().zip(r0).zip(r1) {
                    *d = a as u32 | ((b as u32) << 16);
                }
            } else {
                for (d, &a) in d.iter_mut().zip(r0) {
                    *d = a as u32;
                }
            }
        }
    } else {
        for i in 0..w {
            let v = &src[i * os..];
            for p in 0..kp {
                let lo = v[2 * p * ks] as u32;
                let hi = if 2 * p + 1 < k {
                    v[(2 * p + 1) * ks] as u32
                } else {
                    0
                };
                d[p * block + i] = lo | (hi << 16);
            }
        }
    }
}
super::dispatch!(pack_bits_panel, pack_bits_body, (d: &mut [u32], src: &[u16], w: usize, os: usize, k: usize, ks: usize, block: usize));

/// One panel of a row-major bf16 left operand (`w ≤ MR` rows of `k`): whole panels of even
/// `k` through the in-register transpose, the others through [`pack_bits_panel`]. Native path
/// only.
fn pack_bits_lhs_panel(d: &mut [u32], src: &[u16], w: usize, k: usize) {
    debug_assert!(native());
    #[cfg(target_arch = "x86_64")]
    if w == MR && k.is_multiple_of(2) {
        // SAFETY: the native path runs only where native() found AVX-512; `src` holds MR rows
        // of k values and `d` kp · MR pairs (the callers' panels).
        unsafe { pack_bits_rows_native(d, src, k) };
        return;
    }
    pack_bits_panel(d, src, w, k, k, 1, MR)
}

/// [`pack_bits_panel`] for one whole panel of `MR` bf16 rows of even length `k` (row-major,
/// `k` apart): each row's pairs already lie side by side, so the panel is a transpose of
/// `MR × k/2` pairs, 16 pairs at a time in registers ([`transpose16`], the 12 rows padded
/// with zeros).
///
/// # Safety
/// AVX-512F present; `src` holds `MR · k` values and `d` at least `k/2 · MR` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bits_rows_native(d: &mut [u32], src: &[u16], k: usize) {
    use std::arch::x86_64::*;
    let kp = k / 2;
    assert!(k.is_multiple_of(2) && src.len() >= MR * k && d.len() >= kp * MR);
    let rows = src.as_ptr() as *const u32;
    let out = d.as_mut_ptr();
    let full = kp / 16 * 16;
    let zero = _mm512_setzero_si512();
    let mut p = 0;
    while p < full {
        let r: [__m512i; 16] = std::array::from_fn(|i| {
            if i < MR {
                _mm512_loadu_si512(rows.add(i * kp + p) as *const _)
            } else {
                zero
            }
        });
        store_columns(&transpose16(&r), out.add(p * MR), MR, MR);
        p += 16;
    }
    for p in full..kp {
        for r in 0..MR {
            *out.add(p * MR + r) = rows.add(r * kp + p).read_unaligned();
        }
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit lanes (row `i` in `r[i]`): column `x` of the
/// result holds lane `x` of every row. Four stages: 32-bit and 64-bit interleaves within
/// 128-bit lanes, then two 128-bit shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose16(r: &[std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // u[g][c]'s 128-bit lane l holds lane c + 4l of rows 4g..4g+3.
    let u: [[__m512i; 4]; 4] = std::array::from_fn(|g| {
        let (r0, r1, r2, r3) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let t0 = _mm512_unpacklo_epi32(r0, r1);
        let t1 = _mm512_unpackhi_epi32(r0, r1);
        let t2 = _mm512_unpacklo_epi32(r2, r3);
        let t3 = _mm512_unpackhi_epi32(r2, r3);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    });
    let mut col = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let s01_lo = _mm512_shuffle_i32x4::<0x44>(u[0][c], u[1][c]);
        let s01_hi = _mm512_shuffle_i32x4::<0xee>(u[0][c], u[1][c]);
        let s23_lo = _mm512_shuffle_i32x4::<0x44>(u[2][c], u[3][c]);
        let s23_hi = _mm512_shuffle_i32x4::<0xee>(u[2][c], u[3][c]);
        col[c] = _mm512_shuffle_i32x4::<0x88>(s01_lo, s23_lo);
        col[c + 4] = _mm512_shuffle_i32x4::<0xdd>(s01_lo, s23_lo);
        col[c + 8] = _mm512_shuffle_i32x4::<0x88>(s01_hi, s23_hi);
        col[c + 12] = _mm512_shuffle_i32x4::<0xdd>(s01_hi, s23_hi);
    }
    col
}

/// Stores the first `rows` lanes of each of 16 columns at `out + x · stride`. Where a whole
/// panel's rows fill the stride and it is 8 to 15, the stores overlap: each one's extra lanes
/// land in the next column and are overwritten by its store, and only the last is masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_columns(
    col: &[std::arch::x86_64::__m512i; 16],
    out: *mut u32,
    stride: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    let mk = lanes(rows);
    let overlap = stride < 16 && rows == stride && 2 * stride >= 16;
    for (x, &v) in col.iter().enumerate() {
        let at = out.add(x * stride);
        if rows == 16 || (overlap && x < 15) {
            _mm512_storeu_si512(at as *mut _, v);
        } else {
            _mm512_mask_storeu_epi32(at as *mut _, mk, v);
        }
    }
}

/// The mask of the first `n.min(16)` lanes.
#[inline(always)]
fn lanes(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// A strided `rows × cols` matrix rounded to bf16, row-major.
fn rounded(src: &[f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        out.extend((0..cols).map(|c| round(src[r * rs + c * cs])));
    }
    out
}

/// Where a bf16 product's time goes, for `DISTILLERY_BENCH_BREAKDOWN=1 distillery bench
/// gemm-bf16`: medians of `reps` calls on one thread of the micro-kernel alone (a 12 × 32 tile
/// over 256 pairs, data in L1: the kernel's ceiling), of packing an `n × n` bf16 left operand
/// and its right operand, and of the whole `n³` product on one thread. `None` off the native
/// path.
pub(crate) fn breakdown(n: usize, reps: usize) -> Option<Vec<(&'static str, f64, f64)>> {
    if !native() || n == 0 || reps == 0 {
        return None;
    }
    let med = |f: &mut dyn FnMut()| {
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = std::time::Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    // Values in [0, 1) from a fixed LCG (the kernels depend on no other module of the crate).
    let mut state = 9u64;
    let bits: Vec<u16> = (0..n * n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            round_bits((state >> 40) as f32 / (1u64 << 24) as f32) as u16
        })
        .collect();
    let kp = n.div_ceil(2);
    let mut out = Vec::new();
    // The micro-kernel, 256 tiles per call.
    let (ta, tb) = (
        vec![0x3f80_3f80u32; 256 * MR],
        vec![0x3f80_3f80u32; 256 * NR],
    );
    let mut c = vec![0f32; MR * NR];
    let s = med(&mut || {
        for _ in 0..256 {
            // SAFETY: native() is true; the tile reads 256 pairs of each operand and writes
            // one MR × NR tile of c.
            unsafe { tile(&ta, &tb, 256, c.as_mut_ptr(), NR, MR, NR, true) };
        }
    });
    out.push((
        "micro-kernel, data in L1",
        s * 1e3,
        256.0 * (2 * MR * NR * 512) as f64 / s / 1e9,
    ));
    let mut lb = vec![0u32; n.div_ceil(MR) * kp * MR];
    let s = med(&mut || {
        for (panel, d) in lb.chunks_mut(kp * MR).enumerate() {
            let w = (n - panel * MR).min(MR);
            pack_bits_lhs_panel(d, &bits[panel * MR * n..], w, n);
        }
    });
    out.push(("packing the left operand", s * 1e3, 0.0));
    let mut rb = vec![0u32; kp * NR];
    let s = med(&mut || {
        for j in 0..n.div_ceil(NR) {
            let w = (n - j * NR).min(NR);
            pack_bits_panel(&mut rb, &bits[j * NR..], w, 1, n, n, NR);
        }
    });
    out.push(("packing the right operand", s * 1e3, 0.0));
    let mut dst = vec![0f32; n * n];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .ok()?;
    let s = pool.install(|| med(&mut || matmul_bits(&mut dst, n, n, n, false, &bits, &bits)));
    out.push((
        "whole product, one thread",
        s * 1e3,
        2.0 * (n * n * n) as f64 / s / 1e9,
    ));
    Some(out)
}

/// The right operand of a native product.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    /// Packed whole ([`PackedRhs`]).
    Packed(&'a [u32]),
    /// Strided f32 (`rs`, `cs`): each column panel is packed by the task that computes it,
    /// while it is in cache.
    Raw(&'a [f32], usize, usize),
    /// bf16 bits, row-major `k × n`, packed per column panel likewise.
    Bits(&'a [u16]),
}

/// The left operand of a native product.
#[derive(Clone, Copy)]
enum Lhs<'a> {
    /// Strided f32 (`rs`, `cs`).
    F32(&'a [f32], usize, usize),
    /// bf16 bits, row-major `m × k`.
    Bits(&'a [u16]),
}

/// The native product: the left operand packed once, then column panels of 32 in parallel
/// (split into runs of rows where the panels are fewer than twice the threads),
/// each in equal blocks of at most `KCP` pairs over all rows.
#[allow(clippy::too_many_arguments)]
fn product(dst: &mut [f32], m: usize, n: usize, k: usize, read: bool, lhs: Lhs, rhs: Rhs) {
    // The buffers are taken out of their thread-locals while in use (and put back after), so
    // that a product started on a rayon worker while it waits inside another stays correct.
    let mut lb = LHS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    {
        match lhs {
            Lhs::F32(src, rs, cs) => pack(true, &mut lb, src, m, rs, k, cs, MR),
            Lhs::Bits(bits) => {
                lb.clear();
                lb.resize(m.div_ceil(MR) * k.div_ceil(2) * MR, 0);
                let one = |(panel, d): (usize, &mut [u32])| {
                    let w = (m - panel * MR).min(MR);
                    pack_bits_lhs_panel(d, &bits[panel * MR * k..], w, k);
                };
                let len = k.div_ceil(2) * MR;
                if rayon::current_num_threads() > 1 && m > MR && m * k >= 1 << 17 {
                    lb.par_chunks_mut(len).enumerate().for_each(one);
                } else {
                    lb.chunks_mut(len).enumerate().for_each(one);
                }
            }
        }
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let threads = rayon::current_num_threads();
        let row_tiles = m.div_ceil(MR);
        let parallel = threads > 1 && m * n * k >= 1 << 18 && panels * row_tiles > 1;
        // Tasks: column panels, each split into `chunks` runs of row tiles when there are too
        // few panels to share (a 10-wide output layer is one panel): each chunk packs its
        // panel of the right operand again, which is small when panels are few.
        let chunks = if parallel && panels < 2 * threads {
            (2 * threads).div_ceil(panels).min(row_tiles)
        } else {
            1
        };
        let tiles_per = row_tiles.div_ceil(chunks);
        let dst_addr = dst.as_mut_ptr() as usize;
        let a: &[u32] = &lb;
        let run = |j: usize, tiles: std::ops::Range<usize>, b: &[u32]| {
            let cols = (n - j * NR).min(NR);
            // Equal blocks: 600 pairs as 300 + 300, not 512 + 88.
            let block = kp.div_ceil(kp.div_ceil(KCP));
            for p0 in (0..kp).step_by(block) {
                let pc = (kp - p0).min(block);
                let acc = read || p0 > 0;
                for t in tiles.clone() {
                    let r0 = t * MR;
                    let rows = (m - r0).min(MR);
                    let ap = &a[(t * kp + p0) * MR..];
                    // SAFETY: native() checked the features; the packed operands hold `pc`
                    // pairs from these offsets (panels of kp · MR and kp · NR pairs), and the
                    // tile's `rows × cols` outputs at (r0, j·NR) lie inside dst (m × n). Tasks
                    // write disjoint tiles.
                    unsafe {
                        let c = (dst_addr as *mut f32).add(r0 * n + j * NR);
                        tile(ap, &b[p0 * NR..], pc, c, n, rows, cols, acc);
                    }
                }
            }
        };
        let task = |q: usize| {
            let (j, h) = (q / chunks, q % chunks);
            let tiles = h * tiles_per..((h + 1) * tiles_per).min(row_tiles);
            if tiles.is_empty() {
                return;
            }
            match rhs {
                Rhs::Packed(b) => run(j, tiles, &b[j * kp * NR..][..kp * NR]),
                Rhs::Raw(src, rs, cs) => {
                    let mut rb = RHS.with(|b| std::mem::take(&mut *b.borrow_mut()));
                    rb.clear();
                    rb.resize(kp * NR, 0);
                    let w = (n - j * NR).min(NR);
                    // SAFETY: native() found AVX-512; the caller's asserts bound src.
                    unsafe { pack_panel_native(&mut rb, &src[j * NR * cs..], w, cs, k, rs, NR) };
                    run(j, tiles, &rb);
                    RHS.with(|b| *b.borrow_mut() = rb);
                }
                Rhs::Bits(bits) => {
                    let mut rb = RHS.with(|b| std::mem::take(&mut *b.borrow_mut()));
                    rb.clear();
                    rb.resize(kp * NR, 0);
                    let w = (n - j * NR).min(NR);
                    pack_bits_panel(&mut rb, &bits[j * NR..], w, 1, k, n, NR);
                    run(j, tiles, &rb);
                    RHS.with(|b| *b.borrow_mut() = rb);
                }
            }
        };
        if parallel {
            (0..panels * chunks).into_par_iter().for_each(task);
        } else {
            (0..panels * chunks).for_each(task);
        }
    }
    LHS.with(|b| *b.borrow_mut() = lb);
}

/// Packs `outer` vectors of length `k` (element `(i, t)` at `src[i·os + t·ks]`) as bf16
/// pairs in panels of `block` vectors: `dst[(panel·kp + p)·block + i mod block]` holds
/// elements `2p` (low half) and `2p + 1` (high half) of vector `i`; missing ones are zero.
#[allow(clippy::too_many_arguments)]
fn pack(
    nat: bool,
    dst: &mut Vec<u32>,
    src: &[f32],
    outer: usize,
    os: usize,
    k: usize,
    ks: usize,
    block: usize,
) {
    let kp = k.div_ceil(2);
    let panels = outer.div_ceil(block);
    let len = kp * block;
    dst.clear();
    dst.resize(panels * len, 0);
    let one = |panel: usize, d: &mut [u32]| {
        let i0 = panel * block;
        let w = (outer - i0).min(block);
        let src = &src[i0 * os..];
        #[cfg(target_arch = "x86_64")]
        if nat {
            // SAFETY: the native path runs only where native() found AVX-512.
            unsafe { pack_panel_native(d, src, w, os, k, ks, block) };
            return;
        }
        let _ = nat;
        pack_panel(d, src, w, os, k, ks, block)
    };
    if rayon::current_num_threads() > 1 && panels > 1 && outer * k >= 1 << 17 {
        dst.par_chunks_mut(len)
            .enumerate()
            .for_each(|(panel, d)| one(panel, d));
    } else {
        dst.chunks_mut(len)
            .enumerate()
            .for_each(|(panel, d)| one(panel, d));
    }
}

/// One panel of [`pack`]: `w ≤ block` vectors from `src` into `d` (`kp · block` pairs,
/// zeroed).
fn pack_panel(d: &mut [u32], src: &[f32], w: usize, os: usize, k: usize, ks: usize, block: usize) {
    let kp = k.div_ceil(2);
    for i in 0..w {
        let v = &src[i * os..];
        for p in 0..kp {
            let lo = round_bits(v[2 * p * ks]);
            let hi = if 2 * p + 1 < k {
                round_bits(v[(2 * p + 1) * ks])
            } else {
                0
            };
            d[p * block + i] = lo | (hi << 16);
        }
    }
}

/// [`pack_panel`] with AVX-512: `VCVTNEPS2BF16` rounds 16 values at a time (the same
/// rounding as [`round_bits`]). Contiguous along the outer index: two k rows interleaved;
/// contiguous along k: 32 values rounded into 16 pairs, stored `block` apart.
///
/// # Safety
/// AVX-512F, BW and BF16 present; `src` holds every element the strides name.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_panel_native(
    d: &mut [u32],
    src: &[f32],
    w: usize,
    os: usize,
    k: usize,
    ks: usize,
    block: usize,
) {
    use std::arch::x86_64::*;
    let kp = k.div_ceil(2);
    assert!(d.len() >= kp * block && w <= block);
    if os == 1 {
        // Two k rows interleaved, 16 outer values at a time (masked at the panel's edge, so
        // nothing past `w` is read or written).
        let full = k / 2;
        for p in 0..full {
            let r0 = src.as_ptr().add(2 * p * ks);
            let r1 = src.as_ptr().add((2 * p + 1) * ks);
            let o = d.as_mut_ptr().add(p * block);
            for c in (0..w).step_by(16) {
                let mk = lanes(w - c);
                let lo: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, r0.add(c))));
                let hi: __m256i =
                    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mk, r1.add(c))));
                let v = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(lo),
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
                );
                _mm512_mask_storeu_epi32(o.add(c) as *mut _, mk, v);
            }
        }
        if !k.is_multiple_of(2) {
            let p = full;
            for i in 0..w {
                d[p * block + i] = round_bits(src[2 * p * ks + i]);
            }
        }
        return;
    }
    if ks == 1 && w == block && (block == 12 || block.is_multiple_of(16)) {
        // Vectors contiguous along k: 32 values of each of 16 (or the panel's 12) vectors
        // rounded into 16 pairs, then transposed in registers.
        let full = k / 32 * 32;
        let zero = _mm512_setzero_si512();
        for g in (0..w).step_by(16) {
            let rows = (w - g).min(16);
            let mut t = 0;
            while t < full {
                let r: [__m512i; 16] = std::array::from_fn(|i| {
                    if i >= rows {
                        return zero;
                    }
                    let v = src.as_ptr().add((g + i) * os + t);
                    std::mem::transmute(_mm512_cvtne2ps_pbh(
                        _mm512_loadu_ps(v.add(16)),
                        _mm512_loadu_ps(v),
                    ))
                });
                store_columns(
                    &transpose16(&r),
                    d.as_mut_ptr().add(t / 2 * block + g),
                    block,
                    rows,
                );
                t += 32;
            }
            for i in g..g + rows {
                pairs_from(d, &src[i * os..][..k], i, full, block);
            }
        }
        return;
    }
    if ks == 1 {
        let full = k / 32 * 32;
        let mut tmp = [0u32; 16];
        for i in 0..w {
            let v = src.as_ptr().add(i * os);
            let mut t = 0;
            while t < full {
                let x: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
                    _mm512_loadu_ps(v.add(t + 16)),
                    _mm512_loadu_ps(v.add(t)),
                ));
                _mm512_storeu_si512(tmp.as_mut_ptr() as *mut _, x);
                for (q, &pair) in tmp.iter().enumerate() {
                    *d.get_unchecked_mut((t / 2 + q) * block + i) = pair;
                }
                t += 32;
            }
            pairs_from(d, &src[i * os..][..k], i, full, block);
        }
        return;
    }
    pack_panel(d, src, w, os, k, ks, block)
}

/// The pairs of a contiguous vector `v` from element `from` (even) on, rounded into lane `i` of
/// panel `d` (`block` lanes); a missing last element is zero.
fn pairs_from(d: &mut [u32], v: &[f32], i: usize, from: usize, block: usize) {
    for (q, pair) in v[from..].chunks(2).enumerate() {
        let lo = round_bits(pair[0]);
        let hi = pair.get(1).map_or(0, |&x| round_bits(x));
        d[(from / 2 + q) * block + i] = lo | (hi << 16);
    }
}

/// One tile: `rows ≤ MR` rows × `cols ≤ NR` columns over `kp` pairs.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 present; `a` holds `kp · MR` pairs, `b` `kp · NR`; `c` has
/// `rows` rows of stride `ldc` with `cols` writable values each.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    a: &[u32],
    b: &[u32],
    kp: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    read: bool,
) {
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    #[cfg(target_arch = "x86_64")]
    match rows {
        1 => tile_1(a.as_ptr(), b.as_ptr(), kp, c, cols, read),
        2 => tile_r::<2>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        3 => tile_r::<3>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        4 => tile_r::<4>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        5 => tile_r::<5>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        6 => tile_r::<6>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        7 => tile_r::<7>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        8 => tile_r::<8>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        9 => tile_r::<9>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        10 => tile_r::<10>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        11 => tile_r::<11>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
        _ => tile_r::<12>(a.as_ptr(), b.as_ptr(), kp, c, ldc, cols, read),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "the native bf16 kernel is x86-64 only ({a:?}{b:?}{kp}{c:?}{ldc}{rows}{cols}{read})"
    );
}

/// 16-lane registers per row of a tile.
const NV: usize = NR / 16;

/// Masks of the tile's 16-column groups for `cols` valid columns.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks(cols: usize) -> [u16; NV] {
    std::array::from_fn(|v| {
        let lo = 16 * v;
        if cols >= lo + 16 {
            0xffff
        } else if cols > lo {
            ((1u32 << (cols - lo)) - 1) as u16
        } else {
            0
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_r<const R: usize>(
    a: *const u32,
    b: *const u32,
    kp: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    read: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    for p in 0..kp {
        let bv: [__m512bh; NV] = std::array::from_fn(|v| {
            std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16 * v) as *const _))
        });
        for (r, row) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
            for (x, &bw) in row.iter_mut().zip(&bv) {
                *x = _mm512_dpbf16_ps(*x, av, bw);
            }
        }
    }
    let m = masks(cols);
    for (r, row) in acc.iter().enumerate() {
        store(c.add(r * ldc), row, &m, read);
    }
}

/// One row (batch-1 inference): four sets of accumulators over interleaved k pairs, so the
/// additions do not wait on each other.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_1(a: *const u32, b: *const u32, kp: usize, c: *mut f32, cols: usize, read: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); NV]; 4];
    let step = |acc: &mut [__m512; NV], q: usize| {
        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(q * MR) as i32));
        for (v, x) in acc.iter_mut().enumerate() {
            let bw: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16 * v) as *const _));
            *x = _mm512_dpbf16_ps(*x, av, bw);
        }
    };
    let full = kp / 4 * 4;
    let mut p = 0;
    while p < full {
        for (u, set) in acc.iter_mut().enumerate() {
            step(set, p + u);
        }
        p += 4;
    }
    while p < kp {
        step(&mut acc[0], p);
        p += 1;
    }
    let sum: [__m512; NV] = std::array::from_fn(|v| {
        _mm512_add_ps(
            _mm512_add_ps(acc[0][v], acc[1][v]),
            _mm512_add_ps(acc[2][v], acc[3][v]),
        )
    });
    store(c, &sum, &masks(cols), read);
}

/// Writes (or adds, with `read`) one tile row's registers under the column masks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(c: *mut f32, row: &[std::arch::x86_64::__m512; NV], m: &[u16; NV], read: bool) {
    use std::arch::x86_64::*;
    for (v, (&x, &mv)) in row.iter().zip(m).enumerate() {
        if mv == 0 {
            continue;
        }
        let at = c.add(16 * v);
        let x = if read {
            _mm512_add_ps(x, _mm512_maskz_loadu_ps(mv, at))
        } else {
            x
        };
        _mm512_mask_storeu_ps(at, mv, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// `bf16(lhs) · bf16(rhs)` summed in f64, and the sum of |terms| (the scale of rounding).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        lhs: &[f32],
        lrs: usize,
        lcs: usize,
        rhs: &[f32],
        rrs: usize,
        rcs: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    let v =
                        round(lhs[i * lrs + t * lcs]) as f64 * round(rhs[t * rrs + j * rcs]) as f64;
                    out[i * n + j] += v;
                    mag[i * n + j] += v.abs();
                }
            }
        }
        (out, mag)
    }

    /// The software rounding against `VCVTNEPS2BF16`, bit for bit, on random values of every
    /// magnitude and the special ones (where the machine has AVX-512 BF16).
    #[test]
    fn rounding_matches_the_instruction() {
        if !native() {
            return;
        }
        let mut rng = Rng::new(8);
        let mut xs: Vec<f32> = (0..1 << 16)
            .map(|_| f32::from_bits(rng.next_u64() as u32))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0 + 1.0 / 256.0,
            3.389_531_4e38,
        ]);
        let mut d = vec![0u32; xs.len().div_ceil(2)];
        let k = xs.len();
        // One vector of length k, contiguous along k: the instruction's path.
        // SAFETY: native() found the features; d holds ⌈k/2⌉ pairs.
        unsafe { pack_panel_native(&mut d, &xs, 1, k, k, 1, 1) };
        for (t, &x) in xs.iter().enumerate() {
            let hw = (d[t / 2] >> (16 * (t % 2))) & 0xffff;
            let sw = round_bits(x);
            if x.is_nan() {
                assert!(f32::from_bits(hw << 16).is_nan() && f32::from_bits(sw << 16).is_nan());
            } else {
                assert_eq!(hw, sw, "{x:e} ({:#x})", x.to_bits());
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even one, 1.
        assert_eq!(round(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 ties up to 1 + 2^-6 (even mantissa).
        assert_eq!(round(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round(1.0 + 1.0 / 256.0 + 1e-6), 1.0 + 1.0 / 128.0);
        assert_eq!(round(-2.5), -2.5);
        assert!(round(f32::NAN).is_nan());
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
    }

    /// The paths this machine can run: the portable one, and the native one if present.
    fn paths() -> Vec<bool> {
        if native() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    /// Every layout the training step uses (plain, left transposed, right transposed), odd
    /// and even k, tails in both directions, accumulate or not, one thread and two, against
    /// the exact sum of the rounded products: within 1e-5 of the sum of |terms| (f32 sums).
    /// Runs both paths where the machine has AVX-512 BF16, else the portable one.
    #[test]
    fn products_match_the_rounded_reference() {
        let mut rng = Rng::new(5);
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 70, 33),
            (3, 5, 2),
            (8, 32, 64),
            (9, 33, 65),
            (37, 100, 600),
            (130, 47, 513),
            (300, 70, 1030),
        ] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let rhs: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let init: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
            for (lt, rt) in [(false, false), (true, false), (false, true), (true, true)] {
                let (lrs, lcs) = if lt { (1, m) } else { (k, 1) };
                let (rrs, rcs) = if rt { (1, k) } else { (n, 1) };
                let (want, mag) = reference(m, n, k, &lhs, lrs, lcs, &rhs, rrs, rcs);
                for (nat, read) in paths().into_iter().flat_map(|p| [(p, false), (p, true)]) {
                    let mut got = init.clone();
                    matmul_on(nat, &mut got, m, n, k, read, &lhs, lrs, lcs, &rhs, rrs, rcs);
                    for i in 0..m * n {
                        let w = want[i] + if read { init[i] as f64 } else { 0.0 };
                        let tol = 1e-5 * (mag[i] + 1.0);
                        assert!(
                            (got[i] as f64 - w).abs() <= tol,
                            "{m}x{n}x{k} native={nat} lt={lt} rt={rt} read={read} [{i}]: {} vs {w}",
                            got[i]
                        );
                    }
                }
            }
            // The packed right operand gives the same values as packing per call.
            for nat in paths() {
                let packed = PackedRhs::on(nat, &rhs, k, n);
                let mut a = vec![0f32; m * n];
                let mut b = vec![0f32; m * n];
                matmul_on(nat, &mut a, m, n, k, false, &lhs, k, 1, &rhs, n, 1);
                matmul_packed(&mut b, m, false, &lhs, k, 1, &packed);
                assert_eq!(a, b, "{m}x{n}x{k} native={nat} packed");
            }
        }
    }

    /// Operands given as bf16 bits give exactly what the same values given as f32 give (they
    /// round to themselves), on both paths.
    #[test]
    fn bits_operands_match_f32_operands() {
        let mut rng = Rng::new(7);
        for &(m, n, k) in &[(1, 1, 1), (5, 33, 7), (13, 70, 64), (40, 100, 301)] {
            let a: Vec<u16> = (0..m * k)
                .map(|_| round_bits(rng.normal()) as u16)
                .collect();
            let b: Vec<u16> = (0..k * n)
                .map(|_| round_bits(rng.normal()) as u16)
                .collect();
            let f = |v: &[u16]| -> Vec<f32> {
                v.iter()
                    .map(|&x| f32::from_bits((x as u32) << 16))
                    .collect()
            };
            let (af, bf) = (f(&a), f(&b));
            let mut want = vec![1f32; m * n];
            matmul(&mut want, m, n, k, true, &af, k, 1, &bf, n, 1);
            let mut got = vec![1f32; m * n];
            matmul_bits(&mut got, m, n, k, true, &a, &b);
            assert_eq!(got, want, "{m}x{n}x{k}");
        }
    }

    /// The native kernel against the portable path on the same operands (when this machine
    /// has AVX-512 BF16): the same rounded products, so agreement within f32 summation error.
    #[test]
    fn bits_rows_pack_matches_the_portable_pack() {
        if !native() {
            return;
        }
        let mut rng = Rng::new(11);
        for k in [2usize, 30, 32, 34, 64, 1030] {
            let src: Vec<u16> = (0..MR * k).map(|_| (rng.next_u64() >> 48) as u16).collect();
            let kp = k / 2;
            let mut want = vec![0u32; kp * MR];
            pack_bits_panel(&mut want, &src, MR, k, k, 1, MR);
            // A guard past the panel: nothing may be written there.
            let mut got = vec![7u32; kp * MR + 16];
            // SAFETY: native() is true; sizes as the function requires.
            unsafe { pack_bits_rows_native(&mut got, &src, k) };
            assert_eq!(&got[..kp * MR], &want[..], "k = {k}");
            assert!(
                got[kp * MR..].iter().all(|&v| v == 7),
                "k = {k}: wrote past the panel"
            );
        }
    }

    #[test]
    fn the_breakdown_times_every_part() {
        match breakdown(40, 2) {
            Some(parts) => {
                assert_eq!(parts.len(), 4);
                assert!(parts
                    .iter()
                    .all(|&(_, ms, g)| ms > 0.0 && g >= 0.0 && g.is_finite()));
            }
            None => assert!(!native()),
        }
    }

    #[test]
    fn native_and_portable_agree() {
        if !native() {
            return;
        }
        let mut rng = Rng::new(6);
        let (m, n, k) = (64, 200, 300);
        let lhs: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let rhs: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
        let mut got = vec![0f32; m * n];
        matmul_on(true, &mut got, m, n, k, false, &lhs, k, 1, &rhs, n, 1);
        let a: Vec<f32> = lhs.iter().map(|&v| round(v)).collect();
        let b: Vec<f32> = rhs.iter().map(|&v| round(v)).collect();
        let mut want = vec![0f32; m * n];
        crate::kernels::gemm::matmul(&mut want, m, n, k, false, &a, k, 1, &b, n, 1);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (k as f32).sqrt(), "{g} vs {w}");
        }
    }
}
