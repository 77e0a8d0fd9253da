//! Element-wise passes of the dense layers, each compiled for AVX-512, AVX2 and the baseline
//! ([`super::dispatch!`]); the same bits on every path (tested in `models::fused`).

use super::dispatch;
use rayon::prelude::*;

#[inline(always)]
fn add_into_body(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
}
dispatch!(pub add_into, add_into_body, (dst: &mut [f32], src: &[f32]));

#[inline(always)]
fn relu_body(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.max(0.0));
}
dispatch!(pub relu, relu_body, (v: &mut [f32]));

/// A back-propagated gradient smaller than this is taken as 0: a student that fits its
/// labels almost exactly (the probabilities of its wrong classes below 1e-38) would otherwise
/// carry subnormal floats through the backward GEMMs, which x86 cores compute by microcode
/// about a hundred times slower (MNIST's 784-800-800-10 on labels alone slowed from 3 to 7 s an
/// epoch). Such a gradient moves no weight: the optimizer drops far larger ones
/// ([`super::optim::TINY_GRADIENT`]).
pub const GRAD_FLOOR: f32 = 1e-30;

#[inline(always)]
fn flush_tiny_body(v: &mut [f32]) {
    v.iter_mut()
        .for_each(|x| *x = if x.abs() < GRAD_FLOOR { 0.0 } else { *x });
}
dispatch!(pub flush_tiny, flush_tiny_body, (v: &mut [f32]));

#[inline(always)]
fn relu_grad_body(out: &mut [f32], da: &[f32], a: &[f32], keep: f32) {
    out.iter_mut()
        .zip(da.iter().zip(a))
        .for_each(|(o, (d, x))| {
            *o = if *x > 0.0 && d.abs() >= GRAD_FLOOR {
                d * keep
            } else {
                0.0
            }
        });
}
dispatch!(pub relu_grad, relu_grad_body, (out: &mut [f32], da: &[f32], a: &[f32], keep: f32));

/// ReLU in place, on the threads for long buffers.
pub fn relu_in_place(v: &mut [f32]) {
    if v.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        v.par_chunks_mut(1 << 14).for_each(relu);
    } else {
        relu(v);
    }
}

/// `out = da · keep` where the layer's output `a` (after ReLU and dropout) is positive, else 0
/// (and 0 where `|da|` is below [`GRAD_FLOOR`]).
pub fn relu_dropout_grad(out: &mut [f32], da: &[f32], a: &[f32], keep: f32) {
    if out.len() >= 1 << 16 && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(1 << 14)
            .zip(da.par_chunks(1 << 14).zip(a.par_chunks(1 << 14)))
            .for_each(|(o, (d, x))| relu_grad(o, d, x, keep));
    } else {
        relu_grad(out, da, a, keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The dispatched element-wise passes (AVX-512 or AVX2 where the CPU has them) against
    /// the baseline build of the same bodies, bit for bit, on lengths with vector tails.
    #[test]
    fn elementwise_passes_equal_the_baseline_bit_for_bit() {
        let mut r = Rng::new(41);
        for n in [1usize, 7, 16, 33, 1000, 70_001] {
            let a: Vec<f32> = (0..n).map(|_| r.normal()).collect();
            let b: Vec<f32> = (0..n).map(|_| r.normal()).collect();
            let (mut x, mut y) = (a.clone(), a.clone());
            add_into(&mut x, &b);
            add_into_body(&mut y, &b);
            assert_eq!(x, y, "add n={n}");
            let (mut x, mut y) = (a.clone(), a.clone());
            relu_in_place(&mut x);
            relu_body(&mut y);
            assert_eq!(x, y, "relu n={n}");
            let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
            relu_dropout_grad(&mut x, &a, &b, 1.25);
            relu_grad_body(&mut y, &a, &b, 1.25);
            assert_eq!(x, y, "relu grad n={n}");
            // Gradients near 0 (1e-35 and subnormal ones among ordinary ones) are flushed.
            let tiny: Vec<f32> = a
                .iter()
                .enumerate()
                .map(|(i, v)| match i % 3 {
                    0 => v * 1e-35,
                    1 => v * 1e-40,
                    _ => *v,
                })
                .collect();
            let (mut x, mut y) = (tiny.clone(), tiny.clone());
            flush_tiny(&mut x);
            flush_tiny_body(&mut y);
            assert_eq!(x, y, "flush n={n}");
            for (i, (f, t)) in x.iter().zip(&tiny).enumerate() {
                assert_eq!(*f, if i % 3 == 2 { *t } else { 0.0 }, "flush n={n} i={i}");
            }
            let (mut x, mut y) = (vec![0f32; n], vec![0f32; n]);
            relu_dropout_grad(&mut x, &tiny, &b, 1.25);
            relu_grad_body(&mut y, &tiny, &b, 1.25);
            assert_eq!(x, y, "relu grad of tiny n={n}");
            assert!(x.iter().all(|v| *v == 0.0 || v.is_normal()));
        }
    }
}
