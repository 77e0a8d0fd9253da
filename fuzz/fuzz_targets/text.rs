#![no_main]
use libfuzzer_sys::fuzz_target;

// The text readers (JSON Lines or CSV, chosen by the first byte) and both featurizers' n-gram
// path on whatever texts they accept.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let label = if mode & 2 == 0 { Some("label") } else { None };
    let rows = if mode & 1 == 0 {
        distillery::data::text::parse_jsonl(body, "fuzz.jsonl", "text", label)
    } else {
        distillery::data::text::parse_text_csv(body, "fuzz.csv", "text", label)
    };
    if let Ok(rows) = rows {
        let f = distillery::data::text::Featurizer::Ngrams {
            buckets: 1 + (mode as usize) * 97,
            word_ngrams: 1 + (mode as usize % 3),
            min_char: (mode as usize) % 4,
            max_char: 5,
            max_tokens: 64,
        };
        let x = f.featurize(&rows.texts).unwrap();
        assert_eq!(x.len(), rows.texts.len() * 64);
        if label.is_some() {
            let _ = distillery::data::text::class_targets(&rows.labels, None, "fuzz");
        }
    }
});
