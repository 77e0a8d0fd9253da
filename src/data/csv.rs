//! CSV files with a header row. One column is the label (classification: any strings or
//! integers, mapped to class indices; regression: a number); every other column is a numeric
//! feature. Every cell is checked: a non-number, NaN or infinity is reported with its line
//! and column.

use super::{Dataset, Targets, Task};
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// How to read a CSV file.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// The label (target) column's name.
    pub label: String,
    /// Classification or regression.
    pub task: Task,
    /// Optional image shape `[c, h, w]` for the feature columns.
    pub image_shape: Option<Vec<usize>>,
    /// Further target columns (not features): name, task, and — reading a test file — the
    /// training file's classes of a classification column.
    pub extra: Vec<(String, Task, Option<Vec<String>>)>,
}

/// Reads a CSV file (gzip detected from its magic bytes). `classes` gives the class mapping
/// of the training file when reading a test file.
pub fn read_csv(path: &Path, opts: &CsvOptions, classes: Option<&[String]>) -> Result<Dataset> {
    let bytes = crate::io::read_file(path)?;
    parse_csv_bytes(&bytes, &path.display().to_string(), opts, classes)
}

/// Longest line accepted, so that one enormous line cannot exhaust memory.
const MAX_LINE_BYTES: usize = 64 << 20;
/// Most columns accepted.
const MAX_COLUMNS: usize = 1_000_000;
/// Largest CSV accepted, after decompression (a gzip bomb stops here).
const MAX_CSV_BYTES: u64 = 4 << 30;

/// The bytes themselves, or their decompression when they start with gzip's magic bytes;
/// a stream that decompresses to more than `limit` bytes (a gzip bomb) is an error.
pub fn maybe_gunzip<'a>(
    bytes: &'a [u8],
    name: &str,
    limit: u64,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::Input(format!("{name}: corrupt gzip stream: {e}")))?;
        if out.len() as u64 > limit {
            return Err(Error::Input(format!(
                "{name}: decompresses to more than {limit} bytes; distillery reads files of up to 4 GiB"
            )));
        }
        Ok(std::borrow::Cow::Owned(out))
    } else {
        Ok(std::borrow::Cow::Borrowed(bytes))
    }
}

/// Parses CSV bytes; `name` appears in error messages.
pub fn parse_csv_bytes(
    bytes: &[u8],
    name: &str,
    opts: &CsvOptions,
    classes: Option<&[String]>,
) -> Result<Dataset> {
    let data = maybe_gunzip(bytes, name, MAX_CSV_BYTES)?;
    let data: &[u8] = &data;
    if let Some(longest) = data.split(|&b| b == b'\n').map(|l| l.len()).max() {
        if longest > MAX_LINE_BYTES {
            return Err(Error::Input(format!(
                "{name}: a line of {longest} bytes exceeds the {MAX_LINE_BYTES}-byte limit"
            )));
        }
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(data);
    let headers = rdr
        .headers()
        .map_err(|e| Error::Input(format!("{name}: cannot read the header row: {e}")))?
        .clone();
    if headers.len() > MAX_COLUMNS {
        return Err(Error::Input(format!(
            "{name}: the header has {} columns; at most {MAX_COLUMNS} are supported",
            headers.len()
        )));
    }
    if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
        return Err(Error::Input(format!(
            "{name}: empty file (expected a header row)"
        )));
    }
    let label_col = headers
        .iter()
        .position(|h| h == opts.label)
        .ok_or_else(|| {
            let cols: Vec<&str> = headers.iter().take(12).collect();
            Error::Input(format!(
                "{name}: label column '{}' not found; the header has {} columns: {}{}",
                opts.label,
                headers.len(),
                cols.join(", "),
                if headers.len() > 12 { ", ..." } else { "" }
            ))
        })?;
    let mut extra_cols = Vec::with_capacity(opts.extra.len());
    for (col, _, _) in &opts.extra {
        match headers.iter().position(|h| h == col) {
            Some(j) => extra_cols.push(j),
            None => {
                return Err(Error::Input(format!(
                    "{name}: target column '{col}' (data.targets) not found in the header"
                )))
            }
        }
    }
    let mut raw_extra: Vec<Vec<String>> = vec![Vec::new(); extra_cols.len()];
    let d = headers.len() - 1 - extra_cols.len();
    if d == 0 {
        return Err(Error::Input(format!(
            "{name}: no feature columns besides the label '{}'",
            opts.label
        )));
    }
    if let Some(shape) = &opts.image_shape {
        let prod: usize = shape.iter().product();
        if prod != d {
            return Err(Error::Input(format!(
                "{name}: data.image_shape {shape:?} has {prod} values but the file has {d} feature columns"
            )));
        }
    }
    let mut x = Vec::new();
    let mut raw_labels: Vec<String> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = rdr.position().line() + 1;
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(line);
                let msg = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                        "{name}:{line}: row has {len} fields, expected {expected_len} (as in the header)"
                    ),
                    csv::ErrorKind::Utf8 { .. } => format!("{name}:{line}: not valid UTF-8 text"),
                    _ => format!("{name}:{line}: {e}"),
                };
                return Err(Error::Input(msg));
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(line);
        for (j, cell) in record.iter().enumerate() {
            if let Some(k) = extra_cols.iter().position(|&c| c == j) {
                raw_extra[k].push(cell.to_string());
                continue;
            }
            if j == label_col {
                match opts.task {
                    Task::Classification => {
                        if cell.is_empty() {
                            return Err(Error::Input(format!(
                                "{name}:{line}: column '{}': empty label",
                                opts.label
                            )));
                        }
                        raw_labels.push(cell.to_string())
                    }
                    Task::Regression => values.push(parse_cell(cell, name, line, &headers[j])?),
                }
            } else {
                x.push(parse_cell(cell, name, line, &headers[j])?);
            }
        }
    }
    let n = x.len() / d;
    if n == 0 {
        return Err(Error::Input(format!(
            "{name}: no data rows after the header"
        )));
    }
    let targets = match opts.task {
        Task::Regression => Targets::Values(values),
        Task::Classification => {
            let names: Vec<String> = match classes {
                Some(c) => c.to_vec(),
                None => class_names(&raw_labels),
            };
            let mut labels = Vec::with_capacity(n);
            for (i, l) in raw_labels.iter().enumerate() {
                match names.iter().position(|c| c == l) {
                    Some(k) => labels.push(k as u32),
                    None => {
                        return Err(Error::Input(format!(
                            "{name}: data row {} has label '{l}', which the training data does not contain (classes: {})",
                            i + 1,
                            names.join(", ")
                        )))
                    }
                }
            }
            if classes.is_none() && names.len() < 2 {
                return Err(Error::Input(format!(
                    "{name}: column '{}' holds a single class ('{}'); classification needs at least 2",
                    opts.label,
                    names.first().cloned().unwrap_or_default()
                )));
            }
            Targets::Classes { labels, names }
        }
    };
    let mut data = Dataset::new(
        x,
        opts.image_shape.clone().unwrap_or_else(|| vec![d]),
        targets,
    );
    data.features = headers
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label_col && !extra_cols.contains(&j))
        .map(|(_, h)| h.to_string())
        .collect();
    for ((col, task, classes), raw) in opts.extra.iter().zip(raw_extra) {
        data.extra.push(super::ExtraTargets {
            name: col.clone(),
            targets: extra_targets(&raw, col, *task, classes.as_deref(), name)?,
        });
    }
    Ok(data)
}

/// A further target column's targets: classes (an empty cell: [`super::MISSING`]; a test
/// file's classes are the training file's), or values (every cell a number).
fn extra_targets(
    raw: &[String],
    col: &str,
    task: Task,
    classes: Option<&[String]>,
    name: &str,
) -> Result<Targets> {
    Ok(match task {
        Task::Regression => Targets::Values(
            raw.iter()
                .enumerate()
                .map(|(i, c)| parse_cell(c, name, i as u64 + 2, col))
                .collect::<Result<Vec<f32>>>()?,
        ),
        Task::Classification => {
            let present: Vec<String> = raw.iter().filter(|c| !c.is_empty()).cloned().collect();
            let names = match classes {
                Some(c) => c.to_vec(),
                None => class_names(&present),
            };
            if classes.is_none() && names.len() < 2 {
                return Err(Error::Input(format!(
                    "{name}: target column '{col}' holds fewer than 2 classes"
                )));
            }
            let mut labels = Vec::with_capacity(raw.len());
            for (i, c) in raw.iter().enumerate() {
                if c.is_empty() {
                    labels.push(super::MISSING);
                    continue;
                }
                match names.iter().position(|n| n == c) {
                    Some(k) => labels.push(k as u32),
                    None => {
                        return Err(Error::Input(format!(
                            "{name}: data row {} has '{c}' in column '{col}', which the training data does not contain (classes: {})",
                            i + 1,
                            names.join(", ")
                        )))
                    }
                }
            }
            Targets::Classes { labels, names }
        }
    })
}

fn parse_cell(cell: &str, name: &str, line: u64, col: &str) -> Result<f32> {
    if cell.is_empty() {
        return Err(Error::Input(format!(
            "{name}:{line}: column '{col}': empty cell (missing value); expected a number"
        )));
    }
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(Error::Input(format!(
            "{name}:{line}: column '{col}': {v} is not a finite number (NaN and infinity are rejected)"
        ))),
        Err(_) => Err(Error::Input(format!(
            "{name}:{line}: column '{col}': '{}' is not a number",
            truncate(cell, 40)
        ))),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Sorted distinct labels: numerically when every label is a number, else lexicographically.
fn class_names(raw: &[String]) -> Vec<String> {
    let mut names: Vec<String> = raw.to_vec();
    names.sort();
    names.dedup();
    if names.iter().all(|s| s.parse::<f64>().is_ok()) {
        names.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap_or(0.0)
                .partial_cmp(&b.parse::<f64>().unwrap_or(0.0))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(task: Task) -> CsvOptions {
        CsvOptions {
            label: "y".into(),
            task,
            image_shape: None,
            extra: Vec::new(),
        }
    }

    #[test]
    fn string_labels_map_to_sorted_classes() {
        let d = parse_csv_bytes(
            b"a,b,y\n1,2,cat\n3,4,dog\n5,6,cat\n",
            "t.csv",
            &opts(Task::Classification),
            None,
        )
        .unwrap();
        assert_eq!(
            d.class_names().unwrap(),
            &["cat".to_string(), "dog".to_string()]
        );
        assert_eq!(d.labels().unwrap(), &[0, 1, 0]);
        assert_eq!(*d.x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    /// Further target columns are not features; an empty cell of a class column is a missing
    /// label; a test file keeps the training file's classes; a value column needs numbers.
    #[test]
    fn further_target_columns_are_read_apart_from_the_features() {
        let o = CsvOptions {
            extra: vec![
                ("big".into(), Task::Classification, None),
                ("h".into(), Task::Regression, None),
            ],
            ..opts(Task::Classification)
        };
        let d = parse_csv_bytes(
            b"a,big,b,y,h\n1,yes,2,cat,0.5\n3,,4,dog,1.5\n5,no,6,cat,2\n",
            "t.csv",
            &o,
            None,
        )
        .unwrap();
        assert_eq!(*d.x, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(d.features, ["a", "b"]);
        assert_eq!(d.extra.len(), 2);
        assert_eq!(
            d.extra[0].targets,
            Targets::Classes {
                labels: vec![1, crate::data::MISSING, 0],
                names: vec!["no".into(), "yes".into()],
            }
        );
        assert_eq!(d.extra[1].targets, Targets::Values(vec![0.5, 1.5, 2.0]));
        // A test file: the training file's classes, in their order.
        let mut t = o.clone();
        t.extra[0].2 = Some(vec!["no".into(), "yes".into(), "maybe".into()]);
        let classes = ["cat".to_string(), "dog".to_string()];
        let d = parse_csv_bytes(
            b"a,big,b,y,h\n1,maybe,2,cat,0\n",
            "u.csv",
            &t,
            Some(&classes),
        )
        .unwrap();
        assert_eq!(d.extra[0].targets.subset(&[0]), d.extra[0].targets);
        assert!(matches!(&d.extra[0].targets, Targets::Classes { labels, .. } if labels == &[2]));
        let e = parse_csv_bytes(b"a,big,b,y,h\n1,yes,2,cat,\n", "t.csv", &t, Some(&classes))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'h'") && e.contains("empty cell"), "{e}");
        let e = parse_csv_bytes(b"a,b,y\n1,2,cat\n", "t.csv", &o, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("target column 'big'"), "{e}");
    }

    #[test]
    fn numeric_labels_sort_numerically() {
        let d = parse_csv_bytes(
            b"a,y\n1,10\n2,9\n3,2\n",
            "t.csv",
            &opts(Task::Classification),
            None,
        )
        .unwrap();
        assert_eq!(d.class_names().unwrap(), &["2", "9", "10"]);
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse_csv_bytes(
            b"a,y\n1,0\nabc,1\n",
            "t.csv",
            &opts(Task::Classification),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.csv:3") && e.contains("'a'") && e.contains("not a number"),
            "{e}"
        );
        let e = parse_csv_bytes(
            b"a,y\n1,0\nNaN,1\n",
            "t.csv",
            &opts(Task::Classification),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.csv:3") && e.contains("finite"), "{e}");
        let e = parse_csv_bytes(
            b"a,y\n1,0\n",
            "t.csv",
            &CsvOptions {
                label: "z".into(),
                ..opts(Task::Regression)
            },
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("label column 'z' not found"), "{e}");
        let e = parse_csv_bytes(b"a,y\n1,0\n1,2,3\n", "t.csv", &opts(Task::Regression), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.csv:3") && e.contains("3 fields"), "{e}");
    }
}
