//! The floor of the crate: every numeric kernel, and the one place that decides which
//! instruction set they run on. It knows no model, no data set and no run folder.
//!
//! - [`gemm`]: the f32 matrix product (the `gemm` crate, called with our strides and threads)
//!   and the batch-1 GEMV (our AVX2 / AVX-512 kernel);
//! - [`bf16`]: products with bf16 operands and f32 sums (`VDPBF16PS` where the CPU has
//!   AVX-512 BF16, else rounded operands through the f32 product);
//! - [`int8`]: `u8 × i8 → i32` products (AVX-512 VNNI, AVX2, portable), activation
//!   quantization and requantization;
//! - [`elementwise`]: ReLU and its gradient, sums; [`optim`]: the optimizers' updates;
//! - [`math`]: the vectorised `exp` and `erf`, GELU, LayerNorm, a scaled softmax (the BERT
//!   encoder's passes); [`softmax`]: the crate's one softmax / log-sum-exp over rows;
//! - [`conv`]: padding, im2col / col2im and the 2×2 max-pool of the conv blocks;
//! - [`linalg`]: PCA through a symmetric eigen-solver (Jacobi).
//!
//! **One detection, one switch.** [`cpu`] reads the CPU's features once. Two environment
//! variables bound what every kernel may use, int8 and bf16 included:
//! `DISTILLERY_NO_AVX512` (AVX2 at most) and `DISTILLERY_PORTABLE` (no SIMD path of ours: the
//! portable loops, and the `gemm` crate's own choice for f32 products). The tests compare each
//! path with the portable one, so CI runs them with each setting.
//!
//! Element-wise bodies are plain loops of IEEE operations (no fused multiply-add unless written
//! as one, no reassociation), so every path computes the same bits; [`dispatch!`] compiles one
//! body for AVX-512, for AVX2 with FMA and for the baseline.

pub mod bf16;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod int8;
pub mod linalg;
pub mod math;
pub mod optim;
pub mod softmax;

/// What the CPU offers the kernels, after the switches (`DISTILLERY_NO_AVX512`,
/// `DISTILLERY_PORTABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cpu {
    /// AVX2 and FMA.
    pub avx2: bool,
    /// AVX-512 F, VL, DQ (with AVX2 and FMA).
    pub avx512: bool,
    /// AVX-512 BW (bytes and words), with `avx512`.
    pub avx512bw: bool,
    /// AVX-512 VNNI (`vpdpbusd`), with `avx512bw`.
    pub avx512vnni: bool,
    /// AVX-512 BF16 (`VDPBF16PS`), with `avx512bw`.
    pub avx512bf16: bool,
}

impl Cpu {
    /// What the hardware has, ignoring the switches.
    pub fn detect() -> Cpu {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512dq");
            let avx512bw = avx512 && has!("avx512bw");
            Cpu {
                avx2,
                avx512,
                avx512bw,
                avx512vnni: avx512bw && has!("avx512vnni"),
                avx512bf16: avx512bw && has!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu::default()
    }

    /// `self` bounded by the switches: `portable` keeps no SIMD path, `no_avx512` keeps AVX2.
    pub fn limited(self, no_avx512: bool, portable: bool) -> Cpu {
        if portable {
            return Cpu::default();
        }
        if no_avx512 {
            return Cpu {
                avx2: self.avx2,
                ..Cpu::default()
            };
        }
        self
    }

    /// The instruction-set names of what the hardware has, for reports.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("avx2", self.avx2),
            ("fma", self.avx2),
            ("avx512f", self.avx512),
            ("avx512bw", self.avx512bw),
            ("avx512vnni", self.avx512vnni),
            ("avx512bf16", self.avx512bf16),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }
}

/// What the kernels may use here: the CPU's features bounded by the switches, read once.
pub fn cpu() -> Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        Cpu::detect().limited(
            std::env::var_os("DISTILLERY_NO_AVX512").is_some(),
            std::env::var_os("DISTILLERY_PORTABLE").is_some(),
        )
    })
}

/// 2 with AVX-512 (F, VL, DQ) and FMA, 1 with AVX2 and FMA, else 0.
pub fn level() -> u8 {
    let c = cpu();
    if c.avx512 {
        2
    } else if c.avx2 {
        1
    } else {
        0
    }
}

/// The element-wise kernels' path on this CPU, for reports.
pub fn level_name() -> &'static str {
    match level() {
        2 => "AVX-512",
        1 => "AVX2+FMA",
        _ => "portable",
    }
}

/// Defines `$vis fn $name(args)` that runs `$body(args)` (an `#[inline(always)]` function)
/// compiled for the best instruction set [`level`] allows.
macro_rules! dispatch {
    ($vis:vis $name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,fma")]
                unsafe fn v4($($a: $t),*) { $body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) { $body($($a),*) }
                match $crate::kernels::level() {
                    // SAFETY: the CPU has the features each function is compiled for.
                    2 => return unsafe { v4($($a),*) },
                    1 => return unsafe { v3($($a),*) },
                    _ => {}
                }
            }
            $body($($a),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switches_only_take_features_away() {
        let all = Cpu {
            avx2: true,
            avx512: true,
            avx512bw: true,
            avx512vnni: true,
            avx512bf16: true,
        };
        assert_eq!(all.limited(false, false), all);
        let avx2 = all.limited(true, false);
        assert!(avx2.avx2 && !avx2.avx512 && !avx2.avx512vnni && !avx2.avx512bf16);
        assert_eq!(all.limited(true, true), Cpu::default());
        assert_eq!(all.limited(false, true), Cpu::default());
        // What the kernels use never exceeds the hardware.
        let hw = Cpu::detect();
        let c = cpu();
        for (used, has) in [
            (c.avx2, hw.avx2),
            (c.avx512, hw.avx512),
            (c.avx512vnni, hw.avx512vnni),
            (c.avx512bf16, hw.avx512bf16),
        ] {
            assert!(!used || has);
        }
    }

    /// Under the switches (as `.ci/run` sets them), every kernel family reports the path the
    /// switch allows: the int8 kernel, the bf16 kernel, the GEMV and the element-wise level.
    #[test]
    fn every_kernel_obeys_the_switches() {
        let portable = std::env::var_os("DISTILLERY_PORTABLE").is_some();
        let no512 = std::env::var_os("DISTILLERY_NO_AVX512").is_some();
        if portable {
            assert_eq!(cpu(), Cpu::default());
            assert_eq!(int8::Kernel::detect(), int8::Kernel::Portable);
            assert_eq!(level_name(), "portable");
        }
        if portable || no512 {
            assert_ne!(int8::Kernel::detect(), int8::Kernel::Vnni);
            assert!(!bf16::native());
            #[cfg(target_arch = "x86_64")]
            assert!(!gemm::gemv_avx512_ok());
            assert!(level() <= 1);
        }
        if !portable && !no512 {
            assert_eq!(cpu(), Cpu::detect());
        }
    }
}
