#![no_main]
use libfuzzer_sys::fuzz_target;

// The ONNX-teacher loader: any bytes as an ONNX file taking 64 features; when it loads, one
// prediction.
fuzz_target!(|data: &[u8]| {
    use distillery::teachers::{OnnxInput, OnnxTeacher, Teacher};
    if let Ok(t) = OnnxTeacher::from_bytes(
        data.to_vec(),
        "fuzz.onnx",
        64,
        OnnxInput::Raw,
        0,
        distillery::data::Normalizer::None,
    ) {
        let _ = t.predict_rows(&[0.5; 64], 1);
    }
});
