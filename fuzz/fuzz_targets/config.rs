#![no_main]
use libfuzzer_sys::fuzz_target;

// The experiment-file parser and validator (and the --set override path).
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = distillery::config::load_str(text, "fuzz.toml", &[]) {
        let _ = cfg.validate();
    }
    let _ = distillery::config::load_str(text, "fuzz.toml", &["model.a.train.epochs=1".to_string()]);
});
