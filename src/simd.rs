//! Run-time choice of instruction set for the element-wise kernels: one body, compiled for
//! AVX-512, for AVX2 with FMA and for the baseline, the best the CPU has picked once.
//!
//! The bodies are plain loops of IEEE operations (no fused multiply-add unless written as
//! one, no reassociation), so every path computes the same bits; the tests compare each
//! dispatched kernel with its baseline build.

/// 2 with AVX-512 (F, VL, DQ) and FMA, 1 with AVX2 and FMA, else 0; detected once.
/// `DISTILLERY_NO_AVX512` set keeps it at AVX2 (for comparisons).
pub fn level() -> u8 {
    static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let fma = has!("fma");
            if std::env::var_os("DISTILLERY_NO_AVX512").is_none()
                && has!("avx512f")
                && has!("avx512vl")
                && has!("avx512dq")
                && fma
            {
                return 2;
            }
            if has!("avx2") && fma {
                return 1;
            }
        }
        0
    })
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
/// compiled for the best instruction set the CPU has.
macro_rules! dispatch {
    ($vis:vis $name:ident, $body:ident, ($($a:ident: $t:ty),*)) => {
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,fma")]
                unsafe fn v4($($a: $t),*) { $body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) { $body($($a),*) }
                match $crate::simd::level() {
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
