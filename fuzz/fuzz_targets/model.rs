#![no_main]
use libfuzzer_sys::fuzz_target;

// The model-file loader: safetensors header, distillery metadata, tensor shapes.
fuzz_target!(|data: &[u8]| {
    let _ = distillery::models::load_model_bytes(data, "fuzz.safetensors");
});
