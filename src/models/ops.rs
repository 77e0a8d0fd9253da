//! The pooling and strided convolutions of the conv families, with the gradients PyTorch gives.
//! Two of candle 0.11's backward passes are wrong, found by
//! `models::tests::gradients_agree_with_finite_differences`:
//!
//! - `max_pool2d` multiplies the upstream gradient by the *share* of maxima in the window (1/4
//!   for a unique maximum in a 2×2 window) where it should divide by their count, so every conv
//!   layer below a pool learned from a gradient shrunk by the window area per pool above it.
//!   [`max_pool2d`] here is a custom op whose gradient reaches each window's first maximum.
//! - the kernel gradient of `conv2d` with stride > 1 is wrong (it goes through a dilated
//!   convolution that does not compute what it should), and that of `conv1d` is wrong at any
//!   stride once the upstream gradient is not constant. [`conv2d`] here runs a strided
//!   convolution as candle's stride-1 `conv2d` followed by subsampling (a 1×1 kernel subsamples
//!   first, at no extra cost), whose gradients are right; a 3×3 stride-2 layer costs 4× its
//!   strided products. [`conv1d`] is a `1 × k` [`conv2d`].
//!
//! Adam's per-parameter scaling hid the first; nothing hid the second.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::error::Result;

/// `x` (`[n, c, h, w]`) convolved with `w` (`[c_out, c, kh, kw]`), zero padding `pad`, stride
/// `stride`, as candle's `conv2d` computes it but with the right gradients.
pub fn conv2d(x: &Tensor, w: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    if stride <= 1 {
        return conv2d_s1(x, w, pad);
    }
    let (_, _, kh, kw) = w.dims4()?;
    if kh == 1 && kw == 1 && pad == 0 {
        let x = subsample(x, 2, stride, None)?;
        let x = subsample(&x, 3, stride, None)?;
        return conv2d_s1(&x, w, 0);
    }
    let (_, _, h, wd) = x.dims4()?;
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let y = conv2d_s1(x, w, pad)?;
    let y = subsample(&y, 2, stride, Some(oh))?;
    subsample(&y, 3, stride, Some(ow))
}

/// `x` (`[n, c, l]`) convolved with `w` (`[c_out, c, k]`), zero padding `pad`, stride `stride`.
/// For training (`grad`) it is computed as a `1 × k` [`conv2d`] on the explicitly padded input,
/// because candle's `conv1d` kernel gradient is wrong whenever the upstream gradient is not
/// constant; for inference candle's own `conv1d` (its forward is right, and 3× faster at
/// batch 256 than the `1 × k` route).
pub fn conv1d(x: &Tensor, w: &Tensor, pad: usize, stride: usize, grad: bool) -> Result<Tensor> {
    if !grad {
        return Ok(x.conv1d(w, pad, stride, 1, 1)?);
    }
    let x = if pad > 0 {
        x.pad_with_zeros(2, pad, pad)?
    } else {
        x.clone()
    };
    let y = conv2d(&x.unsqueeze(2)?, &w.unsqueeze(2)?, 0, stride)?;
    Ok(y.squeeze(2)?)
}

/// A stride-1 convolution: candle's forward (im2col and a GEMM), and a backward pass that is
/// two more such convolutions — the input gradient a convolution of the upstream gradient with
/// the flipped, transposed kernel, where candle runs `conv_transpose2d` as a direct loop of
/// `c_in`-long dot products (most of a residual net's training time), the kernel gradient as
/// candle computes it at stride 1.
fn conv2d_s1(x: &Tensor, w: &Tensor, pad: usize) -> Result<Tensor> {
    let (_, _, kh, kw) = w.dims4()?;
    let y = x.detach().conv2d(&w.detach(), pad, 1, 1, 1)?;
    if (!x.track_op() && !w.track_op()) || pad >= kh.min(kw) {
        return if pad >= kh.min(kw) {
            Ok(x.conv2d(w, pad, 1, 1, 1)?)
        } else {
            Ok(y)
        };
    }
    let out = y.flatten_all()?.to_vec1::<f32>()?;
    Ok(x.apply_op2(
        w,
        Conv2dS1 {
            pad,
            out,
            shape: y.shape().clone(),
        },
    )?)
}

/// [`conv2d_s1`]'s op: the forward is computed before (and handed over), the backward here.
struct Conv2dS1 {
    pad: usize,
    out: Vec<f32>,
    shape: Shape,
}

impl CustomOp2 for Conv2dS1 {
    fn name(&self) -> &'static str {
        "distillery-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.out.clone()), self.shape.clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let (_, _, kh, kw) = w.dims4()?;
        let p = self.pad;
        let g = grad
            .pad_with_zeros(2, kh - 1 - p, kh - 1 - p)?
            .pad_with_zeros(3, kw - 1 - p, kw - 1 - p)?;
        // `flipped[c, o, a, b] = w[o, c, kh − 1 − a, kw − 1 − b]` (kernels are small).
        let (c_out, c_in) = (w.dim(0)?, w.dim(1)?);
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let mut fv = vec![0f32; wv.len()];
        for o in 0..c_out {
            for c in 0..c_in {
                for a in 0..kh {
                    for b in 0..kw {
                        fv[((c * c_out + o) * kh + a) * kw + b] =
                            wv[((o * c_in + c) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)];
                    }
                }
            }
        }
        let flipped = Tensor::from_vec(fv, (c_in, c_out, kh, kw), w.device())?;
        let dx = g.conv2d(&flipped, 0, 1, 1, 1)?;
        let dw = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, p, 1, 1, 1)?
            .transpose(0, 1)?
            .contiguous()?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Training-mode batch normalisation of `y` (`[n, c, h, w]`) with scale `gamma` and shift
/// `beta` (`[c]`): `gamma · (y − mean) / sqrt(var + eps) + beta` with each channel's batch mean
/// and (biased) variance, which are returned beside the output for the running statistics.
/// One op with the closed-form backward, instead of candle's reductions over dimensions 0, 2
/// and 3 (a strided single-threaded loop that took a third of a residual net's training time).
pub fn batch_norm_train(
    y: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let (n, c, h, w) = y.dims4()?;
    let hw = h * w;
    let count = (n * hw).max(1) as f64;
    let yv = y.flatten_all()?.to_vec1::<f32>()?;
    let (g, b) = (gamma.to_vec1::<f32>()?, beta.to_vec1::<f32>()?);
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for (i, plane) in yv.chunks_exact(hw).enumerate() {
        let ch = i % c;
        sum[ch] += plane.iter().map(|&v| v as f64).sum::<f64>();
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    for (i, plane) in yv.chunks_exact(hw).enumerate() {
        let (ch, m) = (i % c, mean[i % c]);
        sq[ch] += plane.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>();
    }
    let var: Vec<f64> = sq.iter().map(|s| s / count).collect();
    let inv: Vec<f32> = var
        .iter()
        .map(|v| (1.0 / (v + eps).sqrt()) as f32)
        .collect();
    let mean32: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mut out = vec![0f32; yv.len()];
    for (i, (o, plane)) in out
        .chunks_exact_mut(hw)
        .zip(yv.chunks_exact(hw))
        .enumerate()
    {
        let ch = i % c;
        let (m, s, sh) = (mean32[ch], g[ch] * inv[ch], b[ch]);
        o.iter_mut()
            .zip(plane)
            .for_each(|(o, &v)| *o = (v - m) * s + sh);
    }
    let op = BatchNorm {
        out,
        shape: y.shape().clone(),
        mean: mean32.clone(),
        inv,
    };
    let t = y.contiguous()?.apply_op3(gamma, beta, op)?;
    Ok((t, mean32, var.iter().map(|&v| v as f32).collect()))
}

/// [`batch_norm_train`]'s op: the forward computed before, the backward here.
struct BatchNorm {
    out: Vec<f32>,
    shape: Shape,
    mean: Vec<f32>,
    inv: Vec<f32>,
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "distillery-batch-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(self.out.clone()), self.shape.clone()))
    }

    /// With x̂ = (y − mean)·inv and N values per channel: dβ = Σ dy, dγ = Σ dy·x̂,
    /// dy_in = γ·inv·(dy − dβ/N − x̂·dγ/N).
    fn bwd(
        &self,
        y: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = y.dims4()?;
        let hw = h * w;
        let count = (n * hw).max(1) as f32;
        let yv = y.flatten_all()?.to_vec1::<f32>()?;
        let dy = grad.flatten_all()?.to_vec1::<f32>()?;
        let g = gamma.to_vec1::<f32>()?;
        let mut dbeta = vec![0f64; c];
        let mut dgamma = vec![0f64; c];
        for (i, (yp, dp)) in yv.chunks_exact(hw).zip(dy.chunks_exact(hw)).enumerate() {
            let ch = i % c;
            let (m, s) = (self.mean[ch], self.inv[ch]);
            for (&v, &d) in yp.iter().zip(dp) {
                dbeta[ch] += d as f64;
                dgamma[ch] += (d * (v - m) * s) as f64;
            }
        }
        let (db, dg): (Vec<f32>, Vec<f32>) = (
            dbeta.iter().map(|&v| v as f32).collect(),
            dgamma.iter().map(|&v| v as f32).collect(),
        );
        let mut dx = vec![0f32; yv.len()];
        for (i, ((o, yp), dp)) in dx
            .chunks_exact_mut(hw)
            .zip(yv.chunks_exact(hw))
            .zip(dy.chunks_exact(hw))
            .enumerate()
        {
            let ch = i % c;
            let (m, s) = (self.mean[ch], self.inv[ch]);
            let k = g[ch] * s;
            let (mb, mg) = (db[ch] / count, dg[ch] / count);
            for ((o, &v), &d) in o.iter_mut().zip(yp).zip(dp) {
                *o = k * (d - mb - (v - m) * s * mg);
            }
        }
        let dev = y.device();
        Ok((
            Some(Tensor::from_vec(dx, y.shape(), dev)?),
            Some(Tensor::from_vec(dg, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// Positions `0, s, 2s, …` of dimension `dim` (`count` of them; as many as fit when `None`),
/// by reshaping into `[…, count, s, …]` and keeping the first of each `s`.
fn subsample(x: &Tensor, dim: usize, s: usize, count: Option<usize>) -> Result<Tensor> {
    let len = x.dim(dim)?;
    let count = count.unwrap_or(len.div_ceil(s));
    let want = count * s;
    let x = if want > len {
        x.pad_with_zeros(dim, 0, want - len)?
    } else {
        x.narrow(dim, 0, want)?
    };
    let mut shape = x.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, s);
    let y = x.contiguous()?.reshape(shape)?.narrow(dim + 1, 0, 1)?;
    Ok(y.squeeze(dim + 1)?.contiguous()?)
}

/// Non-overlapping max-pooling of `[n, c, h, w]` with windows `kh × kw` (stride = window;
/// trailing rows and columns that do not fill a window are dropped, as PyTorch does).
pub fn max_pool2d(x: &Tensor, kh: usize, kw: usize) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(MaxPool { kh, kw })?)
}

struct MaxPool {
    kh: usize,
    kw: usize,
}

impl MaxPool {
    fn dims(
        &self,
        shape: &Shape,
    ) -> candle_core::Result<(usize, usize, usize, usize, usize, usize)> {
        let (n, c, h, w) = shape.dims4()?;
        let (oh, ow) = (h / self.kh, w / self.kw);
        if self.kh == 0 || self.kw == 0 || oh == 0 || ow == 0 {
            candle_core::bail!(
                "max-pool window {}×{} does not fit a {h}×{w} input",
                self.kh,
                self.kw
            );
        }
        Ok((n * c, h, w, oh, ow, self.kh * self.kw))
    }

    /// Index (within its plane) of the first maximum of output cell `(i, j)`.
    fn argmax(&self, plane: &[f32], w: usize, i: usize, j: usize) -> usize {
        let mut best = i * self.kh * w + j * self.kw;
        let mut m = plane[best];
        for a in 0..self.kh {
            let row = (i * self.kh + a) * w + j * self.kw;
            for (b, &v) in plane[row..row + self.kw].iter().enumerate() {
                if v > m || (v.is_nan() && !m.is_nan()) {
                    m = v;
                    best = row + b;
                }
            }
        }
        best
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "distillery-max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (planes, h, w, oh, ow, _) = self.dims(layout.shape())?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("max-pool needs a contiguous input".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let mut out = vec![0f32; planes * oh * ow];
        for (plane, o) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for i in 0..oh {
                for j in 0..ow {
                    o[i * ow + j] = plane[self.argmax(plane, w, i, j)];
                }
            }
        }
        let (n, c, _, _) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (planes, h, w, oh, ow, _) = self.dims(arg.shape())?;
        let x = arg.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; x.len()];
        for ((plane, d), gp) in x
            .chunks_exact(h * w)
            .zip(dx.chunks_exact_mut(h * w))
            .zip(g.chunks_exact(oh * ow))
            .take(planes)
        {
            for i in 0..oh {
                for j in 0..ow {
                    d[self.argmax(plane, w, i, j)] += gp[i * ow + j];
                }
            }
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Strided convolutions equal candle's forward (which is right; its gradients are not).
    #[test]
    fn strided_convolutions_match_candle_forward() {
        let mut rng = crate::rng::Rng::new(4);
        let mut t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        for hw in [5usize, 7, 8, 14] {
            let x = t(&[2, 3, hw, hw]);
            for (k, pad) in [(3usize, 1usize), (1, 0), (5, 2)] {
                let w = t(&[4, 3, k, k]);
                for stride in [1usize, 2, 3] {
                    let ours = conv2d(&x, &w, pad, stride).unwrap();
                    let theirs = x.conv2d(&w, pad, stride, 1, 1).unwrap();
                    assert_eq!(ours.dims(), theirs.dims());
                    let d = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
                    assert!(
                        d.to_scalar::<f32>().unwrap() < 1e-4,
                        "hw {hw} k {k} s {stride}"
                    );
                }
            }
            let x = t(&[2, 3, hw]);
            let w = t(&[4, 3, 5]);
            for stride in [1usize, 2, 3] {
                let ours = conv1d(&x, &w, 2, stride, true).unwrap();
                let theirs = x.conv1d(&w, 2, stride, 1, 1).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                let d = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-4, "L {hw} s {stride}");
            }
        }
    }

    /// The batch-norm op against the same normalisation written with candle's tensor operations:
    /// outputs, statistics and every gradient (of Σ out ⊙ r) agree to float rounding.
    #[test]
    fn batch_norm_matches_the_tensor_formula() {
        let mut rng = crate::rng::Rng::new(6);
        let mut t = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (y0, g0, b0, r) = (t(&[3, 4, 5, 6]), t(&[4]), t(&[4]), t(&[3, 4, 5, 6]));
        let run = |fused: bool| -> Vec<Vec<f32>> {
            let (y, g, b) = (
                Var::from_tensor(&y0).unwrap(),
                Var::from_tensor(&g0).unwrap(),
                Var::from_tensor(&b0).unwrap(),
            );
            let (out, stats) = if fused {
                let (o, m, v) =
                    batch_norm_train(y.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
                (o, [m, v].concat())
            } else {
                let yt = y.as_tensor();
                let m = yt.mean_keepdim((0, 2, 3)).unwrap();
                let v = yt
                    .broadcast_sub(&m)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((0, 2, 3))
                    .unwrap();
                let s = (&v + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
                let o = yt
                    .broadcast_sub(&m)
                    .unwrap()
                    .broadcast_mul(&s)
                    .unwrap()
                    .broadcast_mul(&g.as_tensor().reshape((1, 4, 1, 1)).unwrap())
                    .unwrap()
                    .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1)).unwrap())
                    .unwrap();
                let stats = [
                    m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                ]
                .concat();
                (o, stats)
            };
            let grads = out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            vec![
                flat(&out),
                stats,
                flat(grads.get(y.as_tensor()).unwrap()),
                flat(grads.get(g.as_tensor()).unwrap()),
                flat(grads.get(b.as_tensor()).unwrap()),
            ]
        };
        let (a, b) = (run(true), run(false));
        for (what, (x, y)) in ["out", "stats", "dy", "dgamma", "dbeta"]
            .iter()
            .zip(a.iter().zip(&b))
        {
            for (p, q) in x.iter().zip(y) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                    "{what}: {p} vs {q}"
                );
            }
        }
    }

    /// The forward equals candle's `max_pool2d` (including dropped trailing rows); the gradient
    /// reaches each window's first maximum whole, as `torch.nn.functional.max_pool2d` gives:
    /// ```python
    /// x = torch.tensor([[[[1., 5, 2, 2, 0], [3, 4, 2, 1, 0], [0, 0, 7, 7, 0]]]], requires_grad=True)
    /// torch.nn.functional.max_pool2d(x, 2).sum().backward()
    /// x.grad  # [[0,1,1,0,0],[0,0,0,0,0],[0,0,0,0,0]]
    /// ```
    #[test]
    fn forward_matches_candle_and_gradient_goes_to_the_first_maximum() {
        let x = Var::from_tensor(
            &Tensor::new(
                &[[[
                    [1f32, 5., 2., 2., 0.],
                    [3., 4., 2., 1., 0.],
                    [0., 0., 7., 7., 0.],
                ]]],
                &Device::Cpu,
            )
            .unwrap(),
        )
        .unwrap();
        let y = max_pool2d(x.as_tensor(), 2, 2).unwrap();
        let reference = x.as_tensor().max_pool2d(2).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_eq!(
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.]
        );
    }
}
