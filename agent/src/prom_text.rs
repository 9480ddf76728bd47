//! A zero-copy parser for the Prometheus text exposition format (version 0.0.4), as Flink's
//! Prometheus reporter writes it.
//!
//! The parser is a plain iterator over lines: it allocates nothing, borrows every name and label
//! value from the input (a label value is copied only when it contains an escape), and reports a
//! malformed line as an error *for that line* and carries on with the next one, so that one bad
//! line never costs a whole scrape.
//!
//! # Why not the `prometheus-parse` crate
//!
//! `prometheus-parse` 0.2.5 was evaluated on the real Flink 2.3 TaskManager exposition
//! (`tests/fixtures/flink-2.3-taskmanager.prom`, 778 lines; figures in docs/BENCHMARKS.md). It
//! was rejected for three reasons:
//!
//! - It drops malformed lines silently, so the agent could not count parse errors, which the
//!   agent must report (`demeter_agent_parse_errors_total`).
//! - Its label parser splits on `,` and `=` and strips quotes, so a label value that contains a
//!   comma, an equals sign, a `}` or an escaped quote is cut or lost. Flink puts user-chosen
//!   operator and job names into label values.
//! - It copies every name, label and value into `String`s and `HashMap`s and groups summaries
//!   through a hash map (output order is random). On the fixture it took longer than this parser
//!   plus the mapping plus MessagePack encoding together.
//!
//! This parser is fuzzed with proptest (`arbitrary input never panics`, and a round trip of
//! generated expositions with escapes); see the tests below.
//!
//! # Grammar accepted
//!
//! ```text
//! line    = blank | "#" comment | "# HELP" name text | "# TYPE" name type | sample
//! sample  = name [ "{" [ label { "," label } [ "," ] ] "}" ] value [ timestamp ]
//! label   = label_name "=" '"' escaped_value '"'
//! ```
//!
//! Names follow `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`. Values are Go
//! floats (`1`, `-2.5e3`, `NaN`, `+Inf`, `-Inf`); the timestamp is integer milliseconds. Tokens
//! are separated by blanks (spaces or tabs), lines by `\n` (a trailing `\r` is ignored).

use std::borrow::Cow;
use std::fmt;

/// The type a `# TYPE` line declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Summary,
    Histogram,
    Untyped,
}

impl MetricKind {
    fn parse(s: &str) -> Option<MetricKind> {
        Some(match s {
            "counter" => MetricKind::Counter,
            "gauge" => MetricKind::Gauge,
            "summary" => MetricKind::Summary,
            "histogram" => MetricKind::Histogram,
            "untyped" | "unknown" => MetricKind::Untyped,
            _ => return None,
        })
    }
}

/// One parsed line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line<'a> {
    Blank,
    /// A `#` line that is neither HELP nor TYPE.
    Comment(&'a str),
    /// `# HELP name text`; `text` is raw (escapes `\\` and `\n` are not resolved).
    Help {
        name: &'a str,
        text: &'a str,
    },
    Type {
        name: &'a str,
        kind: MetricKind,
    },
    Sample(SampleLine<'a>),
}

/// A sample line: `name{labels} value [timestamp]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleLine<'a> {
    pub name: &'a str,
    /// The text between the braces, already validated by the parser.
    labels: &'a str,
    /// The value as written; NaN and infinities are kept (the caller decides what to do).
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl<'a> SampleLine<'a> {
    /// The labels in the order written, with escapes resolved.
    pub fn labels(&self) -> Labels<'a> {
        Labels { rest: self.labels }
    }

    /// The value of one label.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Iterator over the labels of a [`SampleLine`].
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // The label text was validated when the line was parsed, so every step below succeeds;
        // on anything unexpected the iterator simply ends instead of panicking.
        let s = skip_blanks(self.rest);
        let s = s.strip_prefix(',').map(skip_blanks).unwrap_or(s);
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        let name_len = label_name_len(s);
        if name_len == 0 {
            self.rest = "";
            return None;
        }
        let name = &s[..name_len];
        let s = skip_blanks(&s[name_len..]);
        let Some(s) = s.strip_prefix('=') else {
            self.rest = "";
            return None;
        };
        let s = skip_blanks(s);
        let Some(s) = s.strip_prefix('"') else {
            self.rest = "";
            return None;
        };
        match scan_quoted(s) {
            Ok((raw, has_escape, after)) => {
                self.rest = after;
                let value = if has_escape { Cow::Owned(unescape(raw)) } else { Cow::Borrowed(raw) };
                Some((name, value))
            }
            Err(_) => {
                self.rest = "";
                None
            }
        }
    }
}

/// Why a line could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The metric name is empty or has a character outside `[a-zA-Z0-9_:]`.
    InvalidMetricName,
    /// A label name is empty or has a character outside `[a-zA-Z0-9_]`.
    InvalidLabelName,
    /// A label name is not followed by `=`.
    MissingEquals,
    /// A label value does not start with `"`.
    MissingQuote,
    /// A label value has no closing `"` on its line.
    UnterminatedLabelValue,
    /// A backslash in a label value is followed by something other than `\`, `"` or `n`.
    InvalidEscape,
    /// Labels are not separated by `,` or the label set is not closed by `}`.
    InvalidLabelSeparator,
    /// The line ends before the value.
    MissingValue,
    /// The value is not a float.
    InvalidValue,
    /// The timestamp is not an integer.
    InvalidTimestamp,
    /// Something follows the timestamp.
    TrailingGarbage,
    /// A `# TYPE` line with a missing name or an unknown type.
    InvalidTypeLine,
    /// A `# HELP` line without a name.
    InvalidHelpLine,
}

impl ParseErrorKind {
    /// A bounded label for metrics (`error_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            ParseErrorKind::InvalidMetricName => "invalid_metric_name",
            ParseErrorKind::InvalidLabelName => "invalid_label_name",
            ParseErrorKind::MissingEquals => "missing_equals",
            ParseErrorKind::MissingQuote => "missing_quote",
            ParseErrorKind::UnterminatedLabelValue => "unterminated_label_value",
            ParseErrorKind::InvalidEscape => "invalid_escape",
            ParseErrorKind::InvalidLabelSeparator => "invalid_label_separator",
            ParseErrorKind::MissingValue => "missing_value",
            ParseErrorKind::InvalidValue => "invalid_value",
            ParseErrorKind::InvalidTimestamp => "invalid_timestamp",
            ParseErrorKind::TrailingGarbage => "trailing_garbage",
            ParseErrorKind::InvalidTypeLine => "invalid_type_line",
            ParseErrorKind::InvalidHelpLine => "invalid_help_line",
        }
    }
}

/// A malformed line: its 1-based number and what is wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.kind.as_str())
    }
}

impl std::error::Error for ParseError {}

/// Parses `text` line by line.
pub fn parse(text: &str) -> Parser<'_> {
    Parser { rest: Some(text), line: 0 }
}

/// Iterator over the lines of an exposition; see [`parse`].
#[derive(Clone, Debug)]
pub struct Parser<'a> {
    rest: Option<&'a str>,
    line: usize,
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Line<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let text = self.rest?;
        let (line, rest) = match text.find('\n') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        // A final newline does not start another (empty) line.
        self.rest = rest.filter(|r| !r.is_empty());
        self.line += 1;
        Some(parse_line(line).map_err(|kind| ParseError { line: self.line, kind }))
    }
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line<'_>, ParseErrorKind> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let s = skip_blanks(line);
    if s.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(comment) = s.strip_prefix('#') {
        return parse_comment(comment);
    }
    parse_sample(s).map(Line::Sample)
}

fn parse_comment(c: &str) -> Result<Line<'_>, ParseErrorKind> {
    let body = skip_blanks(c);
    let (word, after) = split_token(body);
    match word {
        "HELP" => {
            let after = skip_blanks(after);
            let (name, text) = split_token(after);
            if name.is_empty() || metric_name_len(name) != name.len() {
                return Err(ParseErrorKind::InvalidHelpLine);
            }
            Ok(Line::Help { name, text: skip_blanks(text).trim_end_matches([' ', '\t']) })
        }
        "TYPE" => {
            let after = skip_blanks(after);
            let (name, after) = split_token(after);
            let (kind, after) = split_token(skip_blanks(after));
            if name.is_empty() || metric_name_len(name) != name.len() || !skip_blanks(after).is_empty() {
                return Err(ParseErrorKind::InvalidTypeLine);
            }
            let kind = MetricKind::parse(kind).ok_or(ParseErrorKind::InvalidTypeLine)?;
            Ok(Line::Type { name, kind })
        }
        _ => Ok(Line::Comment(c)),
    }
}

fn parse_sample(s: &str) -> Result<SampleLine<'_>, ParseErrorKind> {
    let name_len = metric_name_len(s);
    if name_len == 0 {
        return Err(ParseErrorKind::InvalidMetricName);
    }
    let name = &s[..name_len];
    let mut rest = &s[name_len..];
    let mut labels = "";
    if let Some(after_brace) = skip_blanks(rest).strip_prefix('{') {
        let (inner, after) = validate_labels(after_brace)?;
        labels = inner;
        rest = after;
    } else if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        // e.g. `foo-bar 1`: a character that may not appear in a name.
        return Err(ParseErrorKind::InvalidMetricName);
    }
    let rest = skip_blanks(rest);
    let (value, rest) = split_token(rest);
    if value.is_empty() {
        return Err(ParseErrorKind::MissingValue);
    }
    let value = parse_value(value).ok_or(ParseErrorKind::InvalidValue)?;
    let rest = skip_blanks(rest);
    let (ts, rest) = split_token(rest);
    let timestamp_ms = if ts.is_empty() {
        None
    } else {
        Some(ts.parse::<i64>().map_err(|_| ParseErrorKind::InvalidTimestamp)?)
    };
    if !skip_blanks(rest).is_empty() {
        return Err(ParseErrorKind::TrailingGarbage);
    }
    Ok(SampleLine { name, labels, value, timestamp_ms })
}

/// Checks the label set that starts after `{`; returns the text between the braces and what
/// follows the closing brace.
fn validate_labels(s: &str) -> Result<(&str, &str), ParseErrorKind> {
    let start = s;
    let mut p = skip_blanks(s);
    loop {
        if let Some(after) = p.strip_prefix('}') {
            let inner = &start[..start.len() - p.len()];
            return Ok((inner, after));
        }
        let name_len = label_name_len(p);
        if name_len == 0 {
            return Err(if p.is_empty() {
                ParseErrorKind::InvalidLabelSeparator
            } else {
                ParseErrorKind::InvalidLabelName
            });
        }
        p = skip_blanks(&p[name_len..]);
        p = skip_blanks(p.strip_prefix('=').ok_or(ParseErrorKind::MissingEquals)?);
        p = p.strip_prefix('"').ok_or(ParseErrorKind::MissingQuote)?;
        let (_, _, after) = scan_quoted(p)?;
        p = skip_blanks(after);
        if let Some(after_comma) = p.strip_prefix(',') {
            p = skip_blanks(after_comma);
        } else if !p.starts_with('}') {
            return Err(ParseErrorKind::InvalidLabelSeparator);
        }
    }
}

/// Scans a label value after its opening quote: returns the raw value, whether it contains an
/// escape, and the text after the closing quote.
fn scan_quoted(s: &str) -> Result<(&str, bool, &str), ParseErrorKind> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut has_escape = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok((&s[..i], has_escape, &s[i + 1..])),
            b'\\' => {
                match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => {}
                    Some(_) => return Err(ParseErrorKind::InvalidEscape),
                    None => return Err(ParseErrorKind::UnterminatedLabelValue),
                }
                has_escape = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    Err(ParseErrorKind::UnterminatedLabelValue)
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a Go-style float: decimal or scientific notation, `NaN`, `+Inf`, `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    // Rust's parser also accepts "infinity" and "inf" in any case, as Go's does. It rejects
    // Go's hexadecimal floats, which no Prometheus client writes.
    s.parse::<f64>().ok()
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// Splits off the first blank-separated token.
fn split_token(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Length of the metric name at the start of `s` (0 if there is none).
fn metric_name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':') {
        return 0;
    }
    1 + b[1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_' || **c == b':').count()
}

/// Length of the label name at the start of `s` (0 if there is none).
fn label_name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.is_empty() || !(b[0].is_ascii_alphabetic() || b[0] == b'_') {
        return 0;
    }
    1 + b[1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(line: &str) -> SampleLine<'_> {
        match parse_line(line) {
            Ok(Line::Sample(s)) => s,
            other => panic!("expected a sample from {line:?}, got {other:?}"),
        }
    }

    #[test]
    fn flink_style_sample_with_trailing_comma() {
        let s = sample(
            r#"flink_taskmanager_job_task_busyTimeMsPerSecond{job_id="89",task_name="Source:_rate_source",subtask_index="1",} 12.5"#,
        );
        assert_eq!(s.name, "flink_taskmanager_job_task_busyTimeMsPerSecond");
        assert_eq!(s.value, 12.5);
        assert_eq!(s.timestamp_ms, None);
        let labels: Vec<_> = s.labels().map(|(k, v)| (k, v.into_owned())).collect();
        assert_eq!(
            labels,
            vec![
                ("job_id", "89".to_string()),
                ("task_name", "Source:_rate_source".to_string()),
                ("subtask_index", "1".to_string())
            ]
        );
        assert_eq!(s.label("subtask_index").as_deref(), Some("1"));
        assert_eq!(s.label("missing"), None);
    }

    #[test]
    fn values_timestamps_and_special_floats() {
        assert_eq!(sample("a 1").value, 1.0);
        assert_eq!(sample("a 2.41591914E8").value, 2.41591914e8);
        assert_eq!(sample("a -1e-3 1700000000000").timestamp_ms, Some(1_700_000_000_000));
        assert!(sample("a NaN").value.is_nan());
        assert_eq!(sample("a +Inf").value, f64::INFINITY);
        assert_eq!(sample("a -Inf").value, f64::NEG_INFINITY);
        assert_eq!(sample("a{} 3").value, 3.0);
        assert_eq!(sample("  a\t{ x = \"1\" , }\t 3  ").label("x").as_deref(), Some("1"));
        assert_eq!(sample("a:b_c 3\r").name, "a:b_c");
    }

    #[test]
    fn escapes_and_awkward_label_values() {
        let s = sample(r#"m{a="x,y=z}",b="say \"hi\"\\n\n",c="é"} 1"#);
        assert_eq!(s.label("a").as_deref(), Some("x,y=z}"));
        assert_eq!(s.label("b").as_deref(), Some("say \"hi\"\\n\n"));
        assert!(matches!(s.label("a"), Some(Cow::Borrowed(_))));
        assert!(matches!(s.label("b"), Some(Cow::Owned(_))));
        assert_eq!(s.label("c").as_deref(), Some("é"));
    }

    #[test]
    fn help_type_and_comments() {
        assert_eq!(
            parse_line("# HELP foo Used (scope: taskmanager_Status)").unwrap(),
            Line::Help { name: "foo", text: "Used (scope: taskmanager_Status)" }
        );
        assert_eq!(
            parse_line("# TYPE foo summary").unwrap(),
            Line::Type { name: "foo", kind: MetricKind::Summary }
        );
        assert_eq!(parse_line("# just a comment").unwrap(), Line::Comment(" just a comment"));
        assert_eq!(parse_line("").unwrap(), Line::Blank);
        assert_eq!(parse_line(" \t").unwrap(), Line::Blank);
    }

    #[test]
    fn malformed_lines_name_the_problem() {
        let cases = [
            ("{a=\"1\"} 1", ParseErrorKind::InvalidMetricName),
            ("foo-bar 1", ParseErrorKind::InvalidMetricName),
            ("9foo 1", ParseErrorKind::InvalidMetricName),
            ("foo{1a=\"1\"} 1", ParseErrorKind::InvalidLabelName),
            ("foo{a\"1\"} 1", ParseErrorKind::MissingEquals),
            ("foo{a=1} 1", ParseErrorKind::MissingQuote),
            ("foo{a=\"1} 1", ParseErrorKind::UnterminatedLabelValue),
            ("foo{a=\"\\x\"} 1", ParseErrorKind::InvalidEscape),
            ("foo{a=\"1\" b=\"2\"} 1", ParseErrorKind::InvalidLabelSeparator),
            ("foo{a=\"1\"", ParseErrorKind::InvalidLabelSeparator),
            ("foo", ParseErrorKind::MissingValue),
            ("foo{a=\"1\"}", ParseErrorKind::MissingValue),
            ("foo one", ParseErrorKind::InvalidValue),
            ("foo 1 soon", ParseErrorKind::InvalidTimestamp),
            ("foo 1 2 3", ParseErrorKind::TrailingGarbage),
            ("# TYPE foo", ParseErrorKind::InvalidTypeLine),
            ("# TYPE foo gauge extra", ParseErrorKind::InvalidTypeLine),
            ("# TYPE foo sometype", ParseErrorKind::InvalidTypeLine),
            ("# HELP", ParseErrorKind::InvalidHelpLine),
        ];
        for (line, kind) in cases {
            assert_eq!(parse_line(line).unwrap_err(), kind, "{line:?}");
        }
    }

    #[test]
    fn errors_carry_line_numbers_and_parsing_goes_on() {
        let text = "# TYPE a gauge\na 1\na{ 2\n\nb 3\n";
        let out: Vec<_> = parse(text).collect();
        assert_eq!(out.len(), 5);
        assert_eq!(out[2], Err(ParseError { line: 3, kind: ParseErrorKind::InvalidLabelName }));
        assert_eq!(out[3], Ok(Line::Blank));
        assert!(matches!(&out[4], Ok(Line::Sample(s)) if s.name == "b" && s.value == 3.0));
        assert_eq!(parse("").count(), 1);
        assert_eq!(parse("a 1").count(), 1);
        assert_eq!(parse("a 1\n").count(), 1);
        assert_eq!(parse("a 1\n\n").count(), 2);
    }

    #[test]
    fn real_flink_taskmanager_exposition_parses_without_errors() {
        let text = include_str!("../tests/fixtures/flink-2.3-taskmanager.prom");
        let mut samples = 0;
        let mut types = 0;
        for line in parse(text) {
            match line.expect("the real exposition has no malformed line") {
                Line::Sample(s) => {
                    samples += 1;
                    assert!(s.name.starts_with("flink_taskmanager_"), "{}", s.name);
                    assert!(s.label("tm_id").is_some(), "{} has no tm_id", s.name);
                }
                Line::Type { .. } => types += 1,
                _ => {}
            }
        }
        assert_eq!(types, 124);
        assert_eq!(samples, 778 - 2 * 124);
    }

    fn label_value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just(','),
                Just('='),
                Just('}'),
                Just('{'),
                Just(' '),
                Just('#'),
                Just('é'),
                proptest::char::range('a', 'z')
            ],
            0..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    fn escape(v: &str) -> String {
        v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)))]

        /// Fuzzing: whatever the bytes, parsing and walking every label never panics.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            for line in parse(&text) {
                if let Ok(Line::Sample(s)) = line {
                    for (k, v) in s.labels() {
                        prop_assert!(!k.is_empty());
                        let _ = v.len();
                    }
                }
            }
        }

        /// Fuzzing with input that looks like an exposition: fragments of real syntax glued in
        /// random order.
        #[test]
        fn exposition_like_input_never_panics(parts in proptest::collection::vec(prop_oneof![
            Just("flink_x"), Just("{"), Just("}"), Just("a"), Just("="), Just("\""), Just("\\"),
            Just(","), Just(" "), Just("\t"), Just("\n"), Just("\r"), Just("1.5"), Just("NaN"),
            Just("+Inf"), Just("# TYPE "), Just("# HELP "), Just("gauge"), Just("-"), Just("e9"),
        ], 0..60)) {
            let text: String = parts.concat();
            let n_lines = text.split('\n').count();
            let mut seen = 0;
            for line in parse(&text) {
                seen += 1;
                if let Ok(Line::Sample(s)) = line {
                    let _ = s.labels().count();
                }
            }
            prop_assert!(seen <= n_lines);
        }

        /// What a Prometheus client writes, with any label values, parses back to the same
        /// name, labels, value and timestamp.
        #[test]
        fn generated_samples_round_trip(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", label_value()), 0..5),
            value in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
            ts in proptest::option::of(any::<i64>()),
            trailing_comma in any::<bool>(),
        ) {
            let mut line = name.clone();
            if !labels.is_empty() || trailing_comma {
                line.push('{');
                for (k, v) in &labels {
                    line.push_str(&format!("{k}=\"{}\",", escape(v)));
                }
                if !trailing_comma && !labels.is_empty() {
                    line.pop();
                }
                line.push('}');
            }
            let v = if value.is_nan() { "NaN".to_string() }
                else if value == f64::INFINITY { "+Inf".to_string() }
                else if value == f64::NEG_INFINITY { "-Inf".to_string() }
                else { format!("{value:e}") };
            line.push(' ');
            line.push_str(&v);
            if let Some(ts) = ts {
                line.push_str(&format!(" {ts}"));
            }
            let s = sample(&line);
            prop_assert_eq!(s.name, name.as_str());
            let got: Vec<(String, String)> = s.labels().map(|(k, v)| (k.to_string(), v.into_owned())).collect();
            prop_assert_eq!(got, labels);
            if value.is_nan() { prop_assert!(s.value.is_nan()); } else { prop_assert_eq!(s.value, value); }
            prop_assert_eq!(s.timestamp_ms, ts);
        }
    }
}
