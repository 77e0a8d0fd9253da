//! The f32 matrix product and the batch-1 matrix-vector product.
//!
//! [`matmul`] calls the `gemm` crate (the GEMM candle itself runs on, with its AVX-512 kernels
//! where the CPU has them) with explicit strides, multi-threaded when the product is large
//! enough to pay for it. [`gemv`] is ours: one sample through a dense layer, bound by how fast
//! the weights stream in, with AVX2 and AVX-512 forms chosen through [`super::cpu`].

use rayon::prelude::*;

/// GEMM timing for `distillery bench` (`DISTILLERY_BENCH_BREAKDOWN`): when on, every dense-layer
/// product of the step (those through `matmul`; not the per-image conv products) records its
/// shape and time. Off, it costs one relaxed load per product.
pub mod profile {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    static ON: AtomicBool = AtomicBool::new(false);
    /// (m, n, k, seconds) per product.
    static RECORDS: Mutex<Vec<(usize, usize, usize, f64)>> = Mutex::new(Vec::new());

    /// Starts (clearing earlier records) or stops recording.
    pub fn enable(on: bool) {
        if on {
            take();
        }
        ON.store(on, Ordering::Relaxed);
    }

    pub(crate) fn on() -> bool {
        ON.load(Ordering::Relaxed)
    }

    pub(crate) fn record(m: usize, n: usize, k: usize, secs: f64) {
        if let Ok(mut r) = RECORDS.lock() {
            r.push((m, n, k, secs));
        }
    }

    /// Runs `f`, an `m × n × k` product, recording its time when recording is on.
    pub(crate) fn timed<R>(m: usize, n: usize, k: usize, f: impl FnOnce() -> R) -> R {
        let t0 = on().then(std::time::Instant::now);
        let r = f();
        if let Some(t0) = t0 {
            record(m, n, k, t0.elapsed().as_secs_f64());
        }
        r
    }

    /// The records so far, emptied.
    pub fn take() -> Vec<(usize, usize, usize, f64)> {
        RECORDS
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

thread_local! {
    /// Set by [`serial`]: this thread's products run on it alone.
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every product on this thread single-threaded: for a caller that has already
/// split its work over the threads (a block of rows per thread through a whole network), so
/// that no product inside splits it again.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let before = SERIAL.with(|s| s.replace(true));
    let r = f();
    SERIAL.with(|s| s.set(before));
    r
}

/// The threads a product on this thread may use: the pool's, or 1 inside [`serial`].
pub fn threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// The `gemm` crate's parallelism for a product on this pool's threads.
pub fn par() -> gemm::Parallelism {
    let t = threads();
    if t > 1 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst[m×n] = (read ? dst : 0) + lhs · rhs` with explicit strides (row stride, column stride),
/// multi-threaded when the product is large enough to pay for it.
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
    let p = if m * n * k >= 1 << 18 {
        par()
    } else {
        gemm::Parallelism::None
    };
    profile::timed(m, n, k, || {
        matmul_with(
            p, dst, m, n, k, read, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs,
        )
    });
}

/// `dst[m×n] += lhs[m×k] · rhs[k×n]` (both row-major) for inference: with several threads and
/// enough rows, the rows are split into one block per thread and each block is one
/// single-threaded product (each thread packs the right operand for itself, and no thread
/// waits for another inside the product); otherwise [`matmul`]. Each output is the same sum
/// of the same products either way; only the blocking of the rows differs. Measured at batch
/// 256 on the 784-1200-1200-10 MLP (Zen 4, 2 threads): 1.04× the one product, 85–87% → 90–91%
/// of the 1024³ product's rate. `DISTILLERY_NO_ROW_SPLIT` set turns it off (for comparisons).
pub fn matmul_rows_split(dst: &mut [f32], m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32]) {
    // Read once: this runs on every inference product.
    static SPLIT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let split = *SPLIT.get_or_init(|| std::env::var_os("DISTILLERY_NO_ROW_SPLIT").is_none());
    let t = threads();
    if !split || t < 2 || m < 16 * t || m * n * k < 1 << 20 {
        matmul(dst, m, n, k, true, lhs, k, 1, rhs, n, 1);
        return;
    }
    check_operands(dst.len(), m, n, k, (lhs.len(), k, 1), (rhs.len(), n, 1));
    let per = m.div_ceil(t);
    profile::timed(m, n, k, || {
        dst[..m * n]
            .par_chunks_mut(per * n)
            .zip(lhs[..m * k].par_chunks(per * k))
            .for_each(|(d, x)| {
                let r = d.len() / n;
                matmul_with(
                    gemm::Parallelism::None,
                    d,
                    r,
                    n,
                    k,
                    true,
                    x,
                    k,
                    1,
                    rhs,
                    n,
                    1,
                );
            })
    });
}

/// `out[n] += x[k] · w[k×n]` (one sample through a dense layer): batch-1 inference, bound by how
/// fast the weights stream in. With AVX2 and FMA: blocks of 64 outputs held in eight registers
/// while the weight rows stream past, four rows per iteration, column blocks shared between the
/// threads (the gemm crate runs a matrix-vector product on one thread); otherwise the gemm
/// crate's product.
pub fn gemv(out: &mut [f32], n: usize, k: usize, x: &[f32], w: &[f32]) {
    assert!(out.len() >= n && x.len() >= k && w.len() >= n * k);
    #[cfg(target_arch = "x86_64")]
    if super::cpu().avx2 {
        // AVX-512 where the CPU has it (unless a switch of `super` says otherwise):
        // blocks of 128 outputs in eight 16-wide registers. Each output sums its products in
        // the same order with the same fused multiply-adds as the AVX2 kernel: bit-identical.
        let kernel: GemvKernel = if gemv_avx512_ok() {
            gemv_avx512
        } else {
            gemv_avx2
        };
        let threads = threads();
        // Worth waking the other thread (tens of µs on a VM) only for about 2 MB of weights.
        if threads > 1 && n * k >= 1 << 19 && n >= 128 {
            // Blocks of 128 outputs, several per thread: rayon's caller runs the blocks nobody
            // has stolen, so a late or descheduled second thread costs at most its share.
            let block = 128;
            out[..n]
                .par_chunks_mut(block)
                .enumerate()
                .for_each(|(i, o)| {
                    let nb = o.len();
                    // SAFETY: as below, on the column block [i·block, i·block + nb) of w (row stride n).
                    unsafe { kernel(o, nb, n, k, x, &w[i * block..]) };
                });
            return;
        }
        // SAFETY: `cpu()` found the features; the assert above bounds every access.
        unsafe { kernel(out, n, n, k, x, w) };
        return;
    }
    matmul(out, 1, n, k, true, x, k, 1, w, n, 1)
}

/// A batch-1 kernel: `(out, n, row stride, k, x, w)`.
#[cfg(target_arch = "x86_64")]
type GemvKernel = unsafe fn(&mut [f32], usize, usize, usize, &[f32], &[f32]);

/// Whether the batch-1 kernel takes its AVX-512 path here.
#[cfg(target_arch = "x86_64")]
pub fn gemv_avx512_ok() -> bool {
    super::cpu().avx512
}

/// One batch-1 kernel per register width: `$lanes`-wide registers, eight of them, hold a block
/// of `8·$lanes` outputs while the weight rows stream past, four rows per iteration; every
/// output sums its products in row order with fused multiply-adds, so the widths agree bit for
/// bit. `$rest` handles the last `n mod 8·$lanes` outputs.
macro_rules! gemv_kernel {
    ($name:ident, $features:literal, $lanes:literal, $zero:ident, $load:ident, $store:ident,
     $set1:ident, $fma:ident, |$o:ident, $nr:ident, $ld:ident, $k:ident, $x:ident, $w:ident, $full:ident| $rest:block) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(out: &mut [f32], n: usize, ld: usize, k: usize, x: &[f32], w: &[f32]) {
            use std::arch::x86_64::*;
            const BLOCK: usize = 8 * $lanes;
            let full = n / BLOCK * BLOCK;
            let wp = w.as_ptr();
            for c0 in (0..full).step_by(BLOCK) {
                let o = out.as_mut_ptr().add(c0);
                let mut acc = [$zero(); 8];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = $load(o.add($lanes * j));
                }
                let mut r = 0;
                while r + 4 <= k {
                    let rows = [
                        wp.add(r * ld + c0),
                        wp.add((r + 1) * ld + c0),
                        wp.add((r + 2) * ld + c0),
                        wp.add((r + 3) * ld + c0),
                    ];
                    for (t, row) in rows.iter().enumerate() {
                        let xv = $set1(*x.get_unchecked(r + t));
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = $fma(xv, $load(row.add($lanes * j)), *a);
                        }
                    }
                    r += 4;
                }
                while r < k {
                    let xv = $set1(*x.get_unchecked(r));
                    let row = wp.add(r * ld + c0);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = $fma(xv, $load(row.add($lanes * j)), *a);
                    }
                    r += 1;
                }
                for (j, a) in acc.iter().enumerate() {
                    $store(o.add($lanes * j), *a);
                }
            }
            let ($o, $nr, $ld, $k, $x, $w, $full) = (out, n, ld, k, x, w, full);
            $rest
        }
    };
}

gemv_kernel!(
    gemv_avx512,
    "avx512f,avx2,fma",
    16,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    |out, n, ld, k, x, w, full| {
        // The last n mod 128 outputs: the AVX2 kernel (64-wide blocks, then its scalar tail).
        if full < n {
            gemv_avx2(&mut out[full..], n - full, ld, k, x, &w[full..]);
        }
    }
);

gemv_kernel!(
    gemv_avx2,
    "avx2,fma",
    8,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    |out, n, ld, k, x, w, full| {
        // The last n mod 64 outputs.
        for (r, &xv) in x[..k].iter().enumerate() {
            let row = &w[r * ld..r * ld + n];
            for (o, wv) in out[full..n].iter_mut().zip(&row[full..]) {
                *o += xv * wv;
            }
        }
    }
);

/// Panics unless an `m × n` output of `dst_len` values and the strided operands
/// `(len, row stride, column stride)` of an `m × k` by `k × n` product hold every index the
/// strides name (what the unsafe products rely on).
pub fn check_operands(
    dst_len: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: (usize, usize, usize),
    rhs: (usize, usize, usize),
) {
    assert!(dst_len >= m * n);
    assert!(m == 0 || k == 0 || lhs.0 > (m - 1) * lhs.1 + (k - 1) * lhs.2);
    assert!(n == 0 || k == 0 || rhs.0 > (k - 1) * rhs.1 + (n - 1) * rhs.2);
}

/// [`matmul`] with the parallelism given.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    p: gemm::Parallelism,
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
    check_operands(
        dst.len(),
        m,
        n,
        k,
        (lhs.len(), lhs_rs, lhs_cs),
        (rhs.len(), rhs_rs, rhs_cs),
    );
    // SAFETY: the checks above keep every index the strides describe inside the slices;
    // dst is row-major m×n and does not alias the inputs (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if read { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            p,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The batch-1 kernel (vectorised blocks, the scalar tail, the per-thread column split)
    /// against the plain sum, accumulating into a non-zero output.
    #[test]
    fn gemv_matches_the_plain_product() {
        let mut r = Rng::new(12);
        for (n, k) in [
            (1usize, 1usize),
            (10, 1200),
            (64, 3),
            (130, 600),
            (1200, 784),
            (777, 97),
        ] {
            let x: Vec<f32> = (0..k).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let mut got = b.clone();
            gemv(&mut got, n, k, &x, &w);
            for (c, (g, b)) in got.iter().zip(&b).enumerate() {
                let want = b + (0..k).map(|i| (x[i] * w[i * n + c]) as f64).sum::<f64>() as f32;
                assert!(
                    (g - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f32).sqrt(),
                    "n {n}, k {k}, output {c}: {g} vs {want}"
                );
            }
        }
    }

    /// The AVX-512 batch-1 kernel against the AVX2 one, on a CPU that has both: bit for bit
    /// (each output sums the same products in the same order with fused multiply-adds). On a
    /// CPU without AVX-512 there is nothing to compare and the test says so.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn gemv_avx512_equals_the_avx2_kernel_bit_for_bit() {
        if !super::super::Cpu::detect().avx512 {
            eprintln!("no AVX-512 on this CPU: only the AVX2 and portable paths run here");
            return;
        }
        let mut r = Rng::new(31);
        for (n, k) in [
            (1usize, 5usize),
            (128, 3),
            (130, 600),
            (1200, 784),
            (777, 97),
            (64, 9),
        ] {
            let x: Vec<f32> = (0..k).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let (mut a, mut c) = (b.clone(), b.clone());
            // SAFETY: both feature sets detected above; the buffers are n, k and n·k long.
            unsafe {
                gemv_avx512(&mut a, n, n, k, &x, &w);
                gemv_avx2(&mut c, n, n, k, &x, &w);
            }
            assert_eq!(a, c, "n {n}, k {k}");
        }
    }

    /// Rows split over the threads (inference) against the one product: the same values to
    /// float rounding, for row counts that divide evenly, unevenly and below the split's
    /// threshold, accumulating onto a bias already in the output.
    #[test]
    fn row_split_product_matches_the_one_product() {
        let mut r = Rng::new(7);
        for (m, n, k) in [
            (256usize, 1200usize, 784usize),
            (37, 300, 200),
            (129, 10, 1200),
            (8, 64, 64),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let bias: Vec<f32> = (0..m * n).map(|_| r.uniform_range(-1.0, 1.0)).collect();
            let (mut one, mut split) = (bias.clone(), bias);
            matmul(&mut one, m, n, k, true, &a, k, 1, &b, n, 1);
            matmul_rows_split(&mut split, m, n, k, &a, &b);
            for (i, (x, y)) in one.iter().zip(&split).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                    "m {m}, n {n}, k {k}, output {i}: {x} vs {y}"
                );
            }
        }
    }
}
