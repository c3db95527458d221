//! A strict parser of the Prometheus text format 0.0.4 and of OpenMetrics
//! text, for tests that scrape `/metrics`: it accepts only what a scraper
//! must accept and panics on anything else.
#![allow(dead_code)]

use std::collections::HashMap;

/// Which text format an exposition is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

/// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*` (no `:` in labels).
fn valid_name(s: &str, label: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (!label && c == ':');
    chars.next().is_some_and(ok_first)
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (!label && c == ':'))
}

/// Splits a sample line into its name, labels (in order) and value; panics
/// on anything that is not `name{label="value",…} value`.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name, false), "bad metric name in {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
            assert!(valid_name(key, true), "bad label name in {line:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &after[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            } else {
                panic!("bad label list in {line:?}");
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("bad value (or a timestamp) in {line:?}")),
    };
    (name.to_owned(), labels, value)
}

/// Parses an exposition strictly and returns every sample by its series
/// (`name` or `name{k="v",…}`, labels sorted). Every line is a sample, a
/// `HELP` or a `TYPE` (or, in OpenMetrics, a `UNIT` and the final `# EOF`);
/// each family's `HELP` and `TYPE` come once, before its samples, which are
/// contiguous and named as its type requires; no series comes twice.
pub fn parse_exposition(text: &str, format: Format) -> HashMap<String, f64> {
    assert!(text.ends_with('\n'), "no final newline");
    let mut lines: Vec<&str> = text.lines().collect();
    if format == Format::OpenMetrics {
        assert_eq!(lines.pop(), Some("# EOF"), "OpenMetrics ends with # EOF");
    }
    let mut samples = HashMap::new();
    let mut seen_families = std::collections::HashSet::new();
    // The family being read: name, type, whether it had HELP.
    let mut family: Option<(String, String, bool)> = None;
    for line in lines {
        assert!(!line.is_empty(), "empty line");
        if let Some(meta) = line.strip_prefix("# ") {
            let (kind, rest) = meta.split_once(' ').unwrap_or((meta, ""));
            let (name, arg) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            assert!(valid_name(name, false), "{line:?}");
            let same = family.as_ref().is_some_and(|f| f.0 == name);
            if !same {
                assert!(
                    seen_families.insert(name.to_owned()),
                    "family {name} comes back after another one"
                );
                family = Some((name.to_owned(), String::new(), false));
            }
            let f = family.as_mut().unwrap();
            match kind {
                "HELP" => {
                    assert!(!f.2 && f.1.is_empty(), "HELP after HELP or TYPE: {line:?}");
                    f.2 = true;
                }
                "TYPE" => {
                    assert!(f.1.is_empty(), "second TYPE: {line:?}");
                    let known = match format {
                        Format::Prometheus => {
                            ["counter", "gauge", "histogram", "summary", "untyped"].as_slice()
                        }
                        Format::OpenMetrics => [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram",
                        ]
                        .as_slice(),
                    };
                    assert!(known.contains(&arg), "unknown type in {line:?}");
                    f.1 = arg.to_owned();
                }
                "UNIT" if format == Format::OpenMetrics => {
                    assert!(name.ends_with(&format!("_{arg}")), "{line:?}");
                }
                _ => panic!("unexpected comment line {line:?}"),
            }
            continue;
        }
        let (name, mut labels, value) = parse_sample(line);
        let (fam, typ, _) = family
            .as_ref()
            .unwrap_or_else(|| panic!("sample before any TYPE: {line:?}"));
        assert!(!typ.is_empty(), "sample of a family without TYPE: {line:?}");
        let suffix = name
            .strip_prefix(fam.as_str())
            .unwrap_or_else(|| panic!("{line:?} is not of family {fam}"));
        let allowed: &[&str] = match (typ.as_str(), format) {
            ("counter", Format::Prometheus) => &[""],
            ("counter", Format::OpenMetrics) => &["_total", "_created"],
            ("gauge", _) => &[""],
            ("histogram", Format::Prometheus) => &["_bucket", "_sum", "_count"],
            ("histogram", Format::OpenMetrics) => &["_bucket", "_sum", "_count", "_created"],
            (t, _) => panic!("no samples expected of type {t}"),
        };
        assert!(allowed.contains(&suffix), "{line:?} in a {typ} family");
        if suffix == "_bucket" {
            assert!(labels.iter().any(|(k, _)| k == "le"), "{line:?}");
        }
        labels.sort();
        let series = if labels.is_empty() {
            name
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        assert!(
            samples.insert(series.clone(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}
