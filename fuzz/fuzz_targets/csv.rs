#![no_main]
use distillery::data::{csv::{parse_csv_bytes, CsvOptions}, Task};
use libfuzzer_sys::fuzz_target;

// The CSV reader, as classification and as regression, with and without an image shape.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let opts = CsvOptions {
        label: "y".into(),
        task: if mode & 1 == 0 { Task::Classification } else { Task::Regression },
        image_shape: if mode & 2 == 0 { None } else { Some(vec![1, 2, 2]) },
        extra: Vec::new(),
    };
    let _ = parse_csv_bytes(body, "fuzz.csv", &opts, None);
});
