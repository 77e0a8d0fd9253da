#![no_main]
use libfuzzer_sys::fuzz_target;

// The model-file loader: safetensors header, distillery metadata, tensor shapes, dtypes.
fuzz_target!(|data: &[u8]| {
    // Any precision: f32 files and quantized ones (int8 layers, int8/int4 weight-only), and
    // tree models (boosted trees, decision trees: every node and leaf index checked).
    let _ = distillery::compress::load_any_bytes(data, "fuzz.safetensors");
});
