//! The conv blocks' own passes: padding, im2col and col2im on a "wide" grid, and the 2×2
//! max-pool with ReLU. Copies, additions and compares (their cost is memory traffic); the
//! products between them are [`super::gemm::matmul`]'s.

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
