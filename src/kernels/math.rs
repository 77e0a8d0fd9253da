//! The BERT encoder's element-wise math: a vectorised `exp` and `erf`, GELU (exact and tanh),
//! bias + activation, bias + LayerNorm, and a scaled softmax over one row. One body each,
//! compiled for AVX-512, AVX2+FMA and the baseline ([`super::dispatch!`]), the best the CPU
//! allows picked at run time. Their arithmetic does not depend on the path beyond the rounding
//! of vectorised sums (tested below against the baseline build and libm).

/// The activation of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// GELU through erf.
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
    /// ReLU.
    Relu,
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` for f32, branch-free so that loops over it vectorise: `x = n ln2 + r`,
/// `|r| ≤ ln2/2`, Cephes' degree-6 polynomial for `e^r`, `2^n` put in the exponent bits.
/// Relative error ≤ 2 ulp on `[-87, 88]`; below, a tiny positive number instead of 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// `erf(x)`: Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7; with f32 rounding, 4.7e-7
/// measured).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - p * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

#[inline(always)]
fn act_one(x: f32, act: Act) -> f32 {
    match act {
        Act::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::GeluTanh => {
            // tanh(u) = 1 − 2 / (e^{2u} + 1)
            let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
            0.5 * x * (2.0 - 2.0 / (exp(2.0 * u) + 1.0))
        }
        Act::Relu => x.max(0.0),
    }
}

/// Sum with 16 independent lanes (vectorises; a single accumulator would not).
#[inline(always)]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut c = v.chunks_exact(16);
    for ch in &mut c {
        for j in 0..16 {
            acc[j] += ch[j];
        }
    }
    let mut s = 0f32;
    for x in c.remainder() {
        s += x;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut c = v.chunks_exact(16);
    for ch in &mut c {
        for j in 0..16 {
            acc[j] = acc[j].max(ch[j]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in c.remainder() {
        m = m.max(x);
    }
    acc.iter().fold(m, |a, &b| a.max(b))
}

#[inline(always)]
fn bias_layer_norm_body(v: &mut [f32], bias: &[f32], g: &[f32], b: &[f32], eps: f32) {
    let n = bias.len();
    for row in v.chunks_exact_mut(n) {
        for (x, &bb) in row.iter_mut().zip(bias) {
            *x += bb;
        }
        let mean = sum(row) / n as f32;
        for x in row.iter_mut() {
            *x -= mean;
        }
        let mut acc = [0f32; 16];
        let mut c = row.chunks_exact(16);
        for ch in &mut c {
            for j in 0..16 {
                acc[j] += ch[j] * ch[j];
            }
        }
        let rest: f32 = c.remainder().iter().map(|x| x * x).sum();
        let var = (acc.iter().sum::<f32>() + rest) / n as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((x, &gg), &bb) in row.iter_mut().zip(g).zip(b) {
            *x = *x * inv * gg + bb;
        }
    }
}

#[inline(always)]
fn bias_act_body(v: &mut [f32], bias: &[f32], act: Act) {
    for row in v.chunks_exact_mut(bias.len()) {
        for (x, &bb) in row.iter_mut().zip(bias) {
            *x = act_one(*x + bb, act);
        }
    }
}

#[inline(always)]
fn add_bias_body(v: &mut [f32], bias: &[f32]) {
    for row in v.chunks_exact_mut(bias.len()) {
        for (x, &bb) in row.iter_mut().zip(bias) {
            *x += bb;
        }
    }
}

#[inline(always)]
fn softmax_scaled_body(row: &mut [f32], scale: f32) {
    let m = max(row);
    for x in row.iter_mut() {
        *x = exp((*x - m) * scale);
    }
    let inv = 1.0 / sum(row);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

use super::dispatch;

dispatch!(pub bias_layer_norm, bias_layer_norm_body, (v: &mut [f32], bias: &[f32], g: &[f32], b: &[f32], eps: f32));
dispatch!(pub bias_act, bias_act_body, (v: &mut [f32], bias: &[f32], act: Act));
dispatch!(pub add_bias, add_bias_body, (v: &mut [f32], bias: &[f32]));
dispatch!(pub softmax_scaled, softmax_scaled_body, (row: &mut [f32], scale: f32));

/// The baseline build of the kernels, for tests against the dispatched ones.
#[cfg(test)]
pub mod portable {
    use super::*;
    pub fn bias_act(v: &mut [f32], bias: &[f32], act: Act) {
        bias_act_body(v, bias, act)
    }
    pub fn bias_layer_norm(v: &mut [f32], bias: &[f32], g: &[f32], b: &[f32], eps: f32) {
        bias_layer_norm_body(v, bias, g, b, eps)
    }
    pub fn softmax_scaled(row: &mut [f32], scale: f32) {
        softmax_scaled_body(row, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    /// The vectorised `exp` and `erf` against libm, and each dispatched kernel against its
    /// baseline build.
    #[test]
    fn kernels_match_libm_and_each_other() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let e = exp(x) as f64;
            let r = (x as f64).exp();
            worst_exp = worst_exp.max(((e - r) / r).abs());
            let y = -6.0 + 12.0 * i as f32 / 200_000.0;
            worst_erf = worst_erf.max((erf(y) as f64 - libm_erf(y as f64)).abs());
        }
        assert!(worst_exp < 3e-7, "exp: relative error {worst_exp}");
        assert!(worst_erf < 6e-7, "erf: absolute error {worst_erf}");
        let mut s = 3u64;
        let v: Vec<f32> = random(7 * 100, &mut s, 4.0);
        let bias: Vec<f32> = random(100, &mut s, 1.0);
        for act in [Act::Gelu, Act::GeluTanh, Act::Relu] {
            let (mut a, mut b) = (v.clone(), v.clone());
            bias_act(&mut a, &bias, act);
            portable::bias_act(&mut b, &bias, act);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "{act:?}: {x} vs {y}"
                );
            }
        }
        let (mut a, mut b) = (v.clone(), v.clone());
        bias_layer_norm(&mut a, &bias, &bias, &bias, 1e-12);
        portable::bias_layer_norm(&mut b, &bias, &bias, &bias, 1e-12);
        let (mut c, mut d) = (v.clone(), v.clone());
        softmax_scaled(&mut c, 0.3);
        portable::softmax_scaled(&mut d, 0.3);
        for ((x, y), (z, w)) in a.iter().zip(&b).zip(c.iter().zip(&d)) {
            assert!((x - y).abs() < 1e-5 && (z - w).abs() < 1e-7);
        }
        // GELU through the vectorised erf against the exact one.
        for i in 0..10_000 {
            let x = -8.0 + 16.0 * i as f32 / 10_000.0;
            let mut g = [x];
            bias_act(&mut g, &[0.0], Act::Gelu);
            let exact = 0.5 * x as f64 * (1.0 + libm_erf(x as f64 / 2f64.sqrt()));
            assert!((g[0] as f64 - exact).abs() < 2e-6, "gelu({x})");
        }
    }

    /// erf to double precision (Numerical Recipes' erfc, relative error < 1.2e-7, is not
    /// enough to test a 1.5e-7 approximation; this series/continued fraction pair is).
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 2.5 {
            // Maclaurin series.
            let mut term = a;
            let mut s = a;
            let mut k = 0.0;
            loop {
                k += 1.0;
                term *= -a * a / k;
                let add = term / (2.0 * k + 1.0);
                s += add;
                if add.abs() < 1e-17 {
                    break;
                }
            }
            s * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction for erfc, evaluated backwards.
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        if x < 0.0 {
            -r
        } else {
            r
        }
    }
}
