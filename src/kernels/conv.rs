//! The conv blocks' own passes: padding, im2col and col2im on a "wide" grid, and the 2×2
//! max-pool with ReLU. Copies, additions and compares (their cost is memory traffic); the
//! products between them are [`super::gemm::matmul`]'s while training.
//!
//! Inference has a kernel of its own, [`direct`]: the convolution computed in place from a
//! channels-last padded image, without im2col, on register tiles of output positions ×
//! output channels (AVX-512, AVX2 with FMA, portable).

/// The geometry of one conv block: a same-padded k×k convolution computed on a "wide" grid.
///
/// The input image is zero-padded to `[c_in, h + k − 1, w + k − 1]` (plus `k` floats of slack).
/// On that padded plane, the k×k window of output `(y, x)` for tap `(ky, kx)` starts at
/// `(y + ky)·wp + x + kx`, so for every tap the inputs of all outputs `(y, x)` with
/// `x < wp` form one contiguous run of `h·wp` floats: im2col is `c_in·k·k` long copies, and
/// col2im `c_in·k·k` long additions. The `wp − w` extra columns per row are computed and
/// ignored (their gradient is zero).
#[derive(Clone, Copy, Default)]
pub struct ConvGeom {
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    /// Padded plane width and height.
    pub wp: usize,
    pub hp: usize,
}

impl ConvGeom {
    pub fn new(c_in: usize, c_out: usize, h: usize, w: usize, k: usize) -> Self {
        ConvGeom {
            c_in,
            c_out,
            h,
            w,
            k,
            wp: w + k - 1,
            hp: h + k - 1,
        }
    }
    pub fn ckk(&self) -> usize {
        self.c_in * self.k * self.k
    }
    /// Wide-grid positions per image.
    pub fn l(&self) -> usize {
        self.h * self.wp
    }
    pub fn plane(&self) -> usize {
        self.hp * self.wp
    }
    /// Padded input size (with slack for the last tap's run).
    pub fn padded(&self) -> usize {
        self.c_in * self.plane() + self.k
    }
    /// Pooled outputs per channel.
    pub fn pq(&self) -> usize {
        (self.h / 2) * (self.w / 2)
    }
    pub fn in_size(&self) -> usize {
        self.c_in * self.h * self.w
    }
    pub fn out_size(&self) -> usize {
        self.c_out * self.pq()
    }

    /// Writes image `x` (`[c_in, h, w]`) into the interior of `xpad`; the border is left as it
    /// is (zero for a buffer that only ever receives interiors).
    pub fn pad(&self, x: &[f32], xpad: &mut [f32]) {
        let p = self.k / 2;
        let (h, w, wp) = (self.h, self.w, self.wp);
        for ci in 0..self.c_in {
            let plane = &mut xpad[ci * self.plane()..];
            for y in 0..h {
                plane[(y + p) * wp + p..][..w].copy_from_slice(&x[(ci * h + y) * w..][..w]);
            }
        }
    }

    /// `cols[r, j] = xpad[base(r) + j]` for `r = (ci, ky, kx)` and `j < h·wp`.
    pub fn im2col(&self, xpad: &[f32], cols: &mut [f32]) {
        let (k, l) = (self.k, self.l());
        for (r, row) in cols.chunks_exact_mut(l).enumerate() {
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            row.copy_from_slice(&xpad[ci * self.plane() + ky * self.wp + kx..][..l]);
        }
    }

    /// `dxpad[base(r) + j] += dcols[r, j]`.
    pub fn col2im(&self, dcols: &[f32], dxpad: &mut [f32]) {
        let (k, l) = (self.k, self.l());
        for (r, row) in dcols.chunks_exact(l).enumerate() {
            let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let dst = &mut dxpad[ci * self.plane() + ky * self.wp + kx..][..l];
            dst.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
    }

    /// 2×2 max-pool (stride 2, floor) of the pre-activations `out` (`[c_out, h·wp]`), then
    /// ReLU: `relu(max) = max(relu)`. `arg` gets the wide-grid index of each window's first
    /// maximum.
    pub fn pool(&self, out: &[f32], pooled: &mut [f32], arg: &mut [u32]) {
        let (l, wp) = (self.l(), self.wp);
        let (ph, pw) = (self.h / 2, self.w / 2);
        for o in 0..self.c_out {
            let plane = &out[o * l..][..l];
            for py in 0..ph {
                let (r0, r1) = (
                    &plane[2 * py * wp..][..2 * pw],
                    &plane[(2 * py + 1) * wp..][..2 * pw],
                );
                let q0 = (o * ph + py) * pw;
                let (pooled, arg) = (&mut pooled[q0..][..pw], &mut arg[q0..][..pw]);
                // Branch-free (selects, not jumps): which element wins is data-dependent.
                for (px, ((a, b), (p, g))) in r0
                    .chunks_exact(2)
                    .zip(r1.chunks_exact(2))
                    .zip(pooled.iter_mut().zip(arg.iter_mut()))
                    .enumerate()
                {
                    let j0 = (2 * py * wp + 2 * px) as u32;
                    let (mut m, mut j) = (a[0], j0);
                    let c = a[1] > m;
                    m = if c { a[1] } else { m };
                    j = if c { j0 + 1 } else { j };
                    let c = b[0] > m;
                    m = if c { b[0] } else { m };
                    j = if c { j0 + wp as u32 } else { j };
                    let c = b[1] > m;
                    m = if c { b[1] } else { m };
                    j = if c { j0 + wp as u32 + 1 } else { j };
                    *p = m.max(0.0);
                    *g = j;
                }
            }
        }
    }
}

/// Slack positions after the wide grid for the direct kernel's last tile of a row (more than
/// the widest tile).
const DIRECT_SLACK: usize = 32;

/// Output channels are padded to a multiple of this for [`direct`] (one AVX-512 register).
pub const DIRECT_LANES: usize = 16;

impl ConvGeom {
    /// Wide-grid positions the direct kernel's output holds per image (the last tile of the
    /// last row may run past the grid).
    pub fn direct_positions(&self) -> usize {
        self.l() + DIRECT_SLACK
    }

    /// Output channels padded for [`direct`].
    pub fn direct_channels(&self) -> usize {
        self.c_out.div_ceil(DIRECT_LANES) * DIRECT_LANES
    }

    /// Length of the channels-last padded image [`direct`] reads: the padded plane, then
    /// slack for the last tile's furthest tap.
    pub fn direct_padded(&self) -> usize {
        (self.direct_positions() + (self.k - 1) * (self.wp + 1)) * self.c_in
    }

    /// Writes image `x` (`[c_in, h, w]`, channels first, or `[h, w, c_in]` when
    /// `channels_last`) into the interior of the channels-last padded image `xp`
    /// (`[hp·wp (+ slack), c_in]`); the border is left as it is (zero for a buffer that only
    /// ever receives interiors).
    pub fn pad_channels_last(&self, x: &[f32], xp: &mut [f32], channels_last: bool) {
        let p = self.k / 2;
        let (h, w, wp, c) = (self.h, self.w, self.wp, self.c_in);
        if c == 1 || channels_last {
            for y in 0..h {
                xp[((y + p) * wp + p) * c..][..w * c].copy_from_slice(&x[y * w * c..][..w * c]);
            }
            return;
        }
        for ci in 0..c {
            let plane = &x[ci * h * w..][..h * w];
            for y in 0..h {
                let row = &mut xp[((y + p) * wp + p) * c..][..w * c];
                for (dst, &v) in row.chunks_exact_mut(c).zip(&plane[y * w..][..w]) {
                    dst[ci] = v;
                }
            }
        }
    }

    /// 2×2 max-pool (stride 2, floor) and ReLU of the direct kernel's output `out`
    /// (`[positions, cop]`, channels last on the wide grid) into `pooled`: `[c_out, h/2·w/2]`
    /// (channels first, as [`ConvGeom::pool`] writes it), or `[h/2·w/2, c_out]` when
    /// `channels_last` (what the next block's [`ConvGeom::pad_channels_last`] copies row by
    /// row). `row` is scratch: each pooled row is taken channels last (contiguous maxima).
    pub fn pool_channels_last(
        &self,
        out: &[f32],
        cop: usize,
        pooled: &mut [f32],
        row: &mut Vec<f32>,
        channels_last: bool,
    ) {
        let wp = self.wp;
        let (ph, pw, c_out) = (self.h / 2, self.w / 2, self.c_out);
        let q = ph * pw;
        row.resize(pw * cop, 0.0);
        // Compares, not `f32::max` (whose NaN rule keeps it from one vector max).
        let mx = |a: f32, b: f32| if a > b { a } else { b };
        for py in 0..ph {
            for (px, m) in row.chunks_exact_mut(cop).enumerate() {
                let p = 2 * py * wp + 2 * px;
                let (a, b) = (
                    &out[p * cop..][..2 * cop],
                    &out[(p + wp) * cop..][..2 * cop],
                );
                let (a0, a1) = a.split_at(cop);
                let (b0, b1) = b.split_at(cop);
                for o in 0..cop {
                    m[o] = mx(mx(mx(a0[o], a1[o]), mx(b0[o], b1[o])), 0.0);
                }
            }
            if channels_last {
                let dst = &mut pooled[py * pw * c_out..][..pw * c_out];
                for (d, m) in dst.chunks_exact_mut(c_out).zip(row.chunks_exact(cop)) {
                    d.copy_from_slice(&m[..c_out]);
                }
                continue;
            }
            for o in 0..c_out {
                let dst = &mut pooled[o * q + py * pw..][..pw];
                for (px, d) in dst.iter_mut().enumerate() {
                    *d = row[px * cop + o];
                }
            }
        }
    }
}

/// Weights `[c_out, c_in·k·k]` (im2col order: channel, row, column) and biases repacked for
/// [`direct`]: `[k·k, c_in, cop]` and `[cop]`, the padded channels zero.
pub fn pack_direct(g: &ConvGeom, w: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (taps, c_in, cop) = (g.k * g.k, g.c_in, g.direct_channels());
    let mut wt = vec![0f32; taps * c_in * cop];
    let ckk = g.ckk();
    let w = &w[..g.c_out * ckk];
    for (j, dst) in wt.chunks_exact_mut(cop).enumerate() {
        let (t, ci) = (j / c_in, j % c_in);
        for (d, &v) in dst.iter_mut().zip(w[ci * taps + t..].iter().step_by(ckk)) {
            *d = v;
        }
    }
    let mut b = vec![0f32; cop];
    b[..g.c_out].copy_from_slice(&bias[..g.c_out]);
    (wt, b)
}

/// The tile width (positions along a row) from `choices` that computes the fewest positions
/// for a row of `w`, the widest on a tie.
fn tile_width(w: usize, choices: &[usize]) -> usize {
    let mut best = choices[0];
    for &r in choices {
        let (cost, best_cost) = (w.div_ceil(r) * r, w.div_ceil(best) * best);
        if cost < best_cost || (cost == best_cost && r > best) {
            best = r;
        }
    }
    best
}

/// The direct convolution of one image: `out[p, o] = bias[o] + Σ_{ky, kx, c} xp[p + ky·wp + kx, c]
/// · W[o, c, ky, kx]` for every wide-grid position `p = y·wp + x` with `x < w` (others may be
/// computed too, and are ignored).
///
/// `xp` is the channels-last padded image ([`ConvGeom::pad_channels_last`], length
/// [`ConvGeom::direct_padded`]), `wt` and `bias` come from [`pack_direct`], and `out` holds
/// `direct_positions · cop` values. With SIMD, a tile of positions along one row × 16 or 32
/// channels stays in registers over all `k·k·c_in` products (each input value broadcast once
/// per tile row, each weight vector loaded once per tile); the tile's width is chosen from a
/// few compiled ones to fit the row, and no im2col copy is made.
pub fn direct(g: &ConvGeom, xp: &[f32], wt: &[f32], bias: &[f32], out: &mut [f32]) {
    let cop = g.direct_channels();
    assert!(xp.len() >= g.direct_padded());
    assert!(wt.len() >= g.k * g.k * g.c_in * cop && bias.len() >= cop);
    assert!(out.len() >= g.direct_positions() * cop);
    let offs: Vec<usize> = (0..g.k * g.k).map(|t| (t / g.k) * g.wp + t % g.k).collect();
    #[cfg(target_arch = "x86_64")]
    match super::level() {
        // SAFETY: the CPU has the features; the asserts above bound every access: a row's
        // tiles end before position (h − 1)·wp + w + 28 ≤ direct_positions, and the furthest
        // read is that plus (k − 1)·(wp + 1), inside direct_padded.
        2 => return unsafe { direct_avx512(g, cop, &offs, xp, wt, bias, out) },
        1 => return unsafe { direct_avx2(g, cop, &offs, xp, wt, bias, out) },
        _ => {}
    }
    let c_in = g.c_in;
    for y in 0..g.h {
        for p in y * g.wp..y * g.wp + g.w {
            let o = &mut out[p * cop..][..cop];
            o.copy_from_slice(&bias[..cop]);
            for (t, &off) in offs.iter().enumerate() {
                let x = &xp[(p + off) * c_in..][..c_in];
                for (ci, &xv) in x.iter().enumerate() {
                    let w = &wt[(t * c_in + ci) * cop..][..cop];
                    o.iter_mut().zip(w).for_each(|(a, &w)| *a += xv * w);
                }
            }
        }
    }
}

/// One direct kernel per register width: tiles of `R` positions × 2 registers of channels
/// (`R` from `$r2`), and × 1 register for a last block of `$lanes` channels (`R` from `$r1`);
/// every `R` is at most 28 (below [`DIRECT_SLACK`]).
macro_rules! direct_kernel {
    ($name:ident, $rows:ident, $tile:ident, $features:literal, $lanes:literal,
     [$($r2:literal),*], [$($r1:literal),*],
     $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            g: &ConvGeom,
            cop: usize,
            offs: &[usize],
            xp: &[f32],
            wt: &[f32],
            bias: &[f32],
            out: &mut [f32],
        ) {
            let (xp, wt, bias, out) = (xp.as_ptr(), wt.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
            let (r2, r1) = (tile_width(g.w, &[$($r2),*]), tile_width(g.w, &[$($r1),*]));
            let mut cb = 0;
            while cb < cop {
                let (xp, wt, bias, out) = (xp, wt.add(cb), bias.add(cb), out.add(cb));
                if cop - cb >= 2 * $lanes {
                    match r2 {
                        $($r2 => $rows::<2, $r2>(g, cop, offs, xp, wt, bias, out),)*
                        _ => unreachable!(),
                    }
                    cb += 2 * $lanes;
                } else {
                    match r1 {
                        $($r1 => $rows::<1, $r1>(g, cop, offs, xp, wt, bias, out),)*
                        _ => unreachable!(),
                    }
                    cb += $lanes;
                }
            }
        }

        /// Every row's tiles of `R` positions, for one block of `V` registers of channels.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $rows<const V: usize, const R: usize>(
            g: &ConvGeom,
            cop: usize,
            offs: &[usize],
            xp: *const f32,
            wt: *const f32,
            bias: *const f32,
            out: *mut f32,
        ) {
            for y in 0..g.h {
                for x0 in (0..g.w).step_by(R) {
                    let p0 = y * g.wp + x0;
                    $tile::<V, R>(xp.add(p0 * g.c_in), wt, bias, out.add(p0 * cop), offs, g.c_in, cop);
                }
            }
        }

        /// `R` positions × `V` registers of channels, summed over every tap and channel.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $tile<const V: usize, const R: usize>(
            xb: *const f32,
            wb: *const f32,
            bias: *const f32,
            o: *mut f32,
            offs: &[usize],
            c_in: usize,
            cop: usize,
        ) {
            use std::arch::x86_64::*;
            let mut acc = [[$zero(); V]; R];
            for r in 0..R {
                for v in 0..V {
                    acc[r][v] = $load(bias.add(v * $lanes));
                }
            }
            for (t, &off) in offs.iter().enumerate() {
                let x = xb.add(off * c_in);
                let w = wb.add(t * c_in * cop);
                for ci in 0..c_in {
                    let mut wv = [$zero(); V];
                    for v in 0..V {
                        wv[v] = $load(w.add(ci * cop + v * $lanes));
                    }
                    for r in 0..R {
                        let xs = $set1(*x.add(r * c_in + ci));
                        for v in 0..V {
                            acc[r][v] = $fma(xs, wv[v], acc[r][v]);
                        }
                    }
                }
            }
            for r in 0..R {
                for v in 0..V {
                    $store(o.add(r * cop + v * $lanes), acc[r][v]);
                }
            }
        }
    };
}

// AVX-512: 32 registers, at most 28 accumulators (measured on a 2-core Xeon, 16→32 channels
// of 14×14: tiles of 14 positions × 32 channels run at 95% of the machine's GEMM rate, of 7 at
// 70%); at least 8 independent sums in flight.
direct_kernel!(
    direct_avx512,
    direct_rows_avx512,
    direct_tile_avx512,
    "avx512f,avx2,fma",
    16,
    [4, 6, 7, 8, 10, 12, 14],
    [8, 12, 14, 16, 20, 24, 28],
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps
);

// AVX2: 16 registers, at most 12 accumulators. Channels come in blocks of 16 (two registers),
// so the one-register tile is never taken.
direct_kernel!(
    direct_avx2,
    direct_rows_avx2,
    direct_tile_avx2,
    "avx2,fma",
    8,
    [3, 4, 5, 6],
    [8],
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The im2col + GEMM pass (what training runs) on one image: pooled output.
    fn reference(g: &ConvGeom, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let mut xpad = vec![0f32; g.padded()];
        let mut cols = vec![0f32; g.ckk() * g.l()];
        let mut out = vec![0f32; g.c_out * g.l()];
        g.pad(x, &mut xpad);
        g.im2col(&xpad, &mut cols);
        for (o, row) in out.chunks_exact_mut(g.l()).enumerate() {
            row.fill(b[o]);
        }
        super::super::gemm::matmul(
            &mut out,
            g.c_out,
            g.l(),
            g.ckk(),
            true,
            w,
            g.ckk(),
            1,
            &cols,
            g.l(),
            1,
        );
        let mut pooled = vec![0f32; g.out_size()];
        let mut arg = vec![0u32; g.out_size()];
        g.pool(&out, &mut pooled, &mut arg);
        pooled
    }

    /// The direct kernel (whatever path this CPU and the switches give) equals the im2col +
    /// GEMM pass within 1e-5 of the output's scale, on shapes that take every tile (two and
    /// one register of channels, padded channels, one input channel and many, odd sizes).
    #[test]
    fn the_direct_kernel_equals_im2col_and_gemm() {
        let mut rng = Rng::new(3);
        for &(c_in, c_out, h, w, k) in &[
            (1, 16, 28, 28, 5),
            (16, 32, 14, 14, 5),
            (3, 20, 9, 7, 3),
            (5, 48, 8, 10, 3),
            (2, 7, 6, 6, 1),
            (4, 40, 11, 13, 5),
        ] {
            let g = ConvGeom::new(c_in, c_out, h, w, k);
            let images = 3;
            let x: Vec<f32> = (0..images * g.in_size()).map(|_| rng.normal()).collect();
            let wt: Vec<f32> = (0..c_out * g.ckk()).map(|_| rng.normal() * 0.3).collect();
            let b: Vec<f32> = (0..c_out).map(|_| rng.normal() * 0.1).collect();
            let (pw, pb) = pack_direct(&g, &wt, &b);
            let mut xp = vec![0f32; g.direct_padded()];
            let mut out = vec![f32::NAN; g.direct_positions() * g.direct_channels()];
            for i in 0..images {
                let img = &x[i * g.in_size()..][..g.in_size()];
                let want = reference(&g, img, &wt, &b);
                g.pad_channels_last(img, &mut xp, false);
                direct(&g, &xp, &pw, &pb, &mut out);
                let mut got = vec![0f32; g.out_size()];
                g.pool_channels_last(&out, g.direct_channels(), &mut got, &mut Vec::new(), false);
                // Channels last, then read back as the next block would: the same values.
                let mut last = vec![0f32; g.out_size()];
                g.pool_channels_last(&out, g.direct_channels(), &mut last, &mut Vec::new(), true);
                let q = g.out_size() / c_out;
                for o in 0..c_out {
                    for j in 0..q {
                        assert_eq!(last[j * c_out + o], got[o * q + j]);
                    }
                }
                let next = ConvGeom::new(c_out, 4, h / 2, w / 2, 3);
                if next.h > 0 && next.w > 0 {
                    let mut a = vec![0f32; next.direct_padded()];
                    let mut b = vec![0f32; next.direct_padded()];
                    next.pad_channels_last(&got, &mut a, false);
                    next.pad_channels_last(&last, &mut b, true);
                    assert_eq!(a, b);
                }
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale,
                        "{c_in}→{c_out} {h}×{w} k{k} image {i} value {j}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
