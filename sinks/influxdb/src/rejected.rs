//! Reading a refusal: which lines of a request did the server reject?
//!
//! InfluxDB 1.x answers 400 `partial write` after storing the lines it accepted, so re-sending
//! the whole batch is pointless (the rejected lines are rejected forever) and quarantining the
//! whole batch would bury good data among bad. When the error names the rejected lines, only
//! those are quarantined. What the servers say (checked against InfluxDB 1.6.7):
//!
//! - 1.x, unparseable lines: `{"error":"partial write: unable to parse 'LINE': reason\nunable
//!   to parse 'LINE2': reason dropped=0"}` (every failed line, in one message; without
//!   `partial write` when no line parsed at all). 2.x uses the same `unable to parse 'LINE'`
//!   text under `"message"`.
//! - 1.x/2.x, a field type conflict with stored data: `partial write: field type conflict:
//!   input field "x" on measurement "m" is type string, already exists as type float
//!   dropped=2`. Only the first conflict is named, and parse errors of the same request are
//!   not mentioned at all: that is why the sink re-sends the remaining lines after
//!   quarantining the named ones, until the server accepts them (see `sink.rs`).
//! - 3.x: `{"error":"partial write of line protocol occurred","data":[{"original_line":"..",
//!   "line_number":2,"error_message":".."}]}` (`data` may also be a single object).

use std::collections::BTreeSet;

/// Longest server message kept in a reason or a quarantine comment: a partial-write message
/// quotes every rejected line and can be as long as the batch.
const MAX_MESSAGE: usize = 500;

/// What the server's error body says about a refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The server's message on one line, shortened.
    pub message: String,
    /// The server says it stored the other lines (`partial write`).
    pub partial: bool,
    /// Indices (into the request's lines) of the lines the server names as rejected.
    pub rejected: BTreeSet<usize>,
}

/// Reads an error body against the lines of the request it answers.
pub fn identify(body: &str, lines: &[&[u8]]) -> Refusal {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = json
        .as_ref()
        .and_then(|v| v.get("error").or_else(|| v.get("message")))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_owned());
    let mut rejected = BTreeSet::new();

    // `unable to parse 'LINE': ...`: LINE is the request line verbatim, quotes and all, so a
    // line matches when the text after the opening quote is the line and then a quote.
    const PARSE: &str = "unable to parse '";
    for (at, _) in message.match_indices(PARSE) {
        let rest = &message.as_bytes()[at + PARSE.len()..];
        for (i, line) in lines.iter().enumerate() {
            if rest.len() > line.len() && rest.starts_with(line) && rest[line.len()] == b'\'' {
                rejected.insert(i);
            }
        }
    }

    // `input field "F" on measurement "M" is type T`: the lines of M whose field F has type T.
    for conflict in type_conflicts(&message) {
        for (i, line) in lines.iter().enumerate() {
            if let Some((measurement, fields)) = scan_line(line) {
                if measurement == conflict.measurement && fields.iter().any(|(k, t)| *k == conflict.field && t.name() == conflict.input_type) {
                    rejected.insert(i);
                }
            }
        }
    }

    // 3.x: `data` lists the rejected lines.
    if let Some(data) = json.as_ref().and_then(|v| v.get("data")) {
        let items: Vec<&serde_json::Value> = match data {
            serde_json::Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for item in items {
            let by_text = item.get("original_line").and_then(|v| v.as_str()).and_then(|text| {
                lines.iter().position(|l| *l == text.as_bytes() || l.strip_suffix(b"\r") == Some(text.as_bytes()))
            });
            let by_number = item
                .get("line_number")
                .and_then(|v| v.as_u64())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=lines.len()).contains(n))
                .map(|n| n - 1);
            if let Some(i) = by_text.or(by_number) {
                rejected.insert(i);
            }
        }
    }

    Refusal { partial: message.contains("partial write"), message: one_line(&message, MAX_MESSAGE), rejected }
}

/// A message as one short line (quarantine comments and log fields are single lines).
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.trim().chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
    if flat.len() <= max {
        return flat;
    }
    let mut end = max;
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &flat[..end])
}

struct Conflict<'a> {
    field: &'a str,
    measurement: &'a str,
    input_type: &'a str,
}

fn type_conflicts(message: &str) -> Vec<Conflict<'_>> {
    const FIELD: &str = "input field \"";
    const ON: &str = "\" on measurement \"";
    const IS: &str = "\" is type ";
    let mut out = Vec::new();
    for (at, _) in message.match_indices(FIELD) {
        let rest = &message[at + FIELD.len()..];
        let Some(on) = rest.find(ON) else { continue };
        let after_on = &rest[on + ON.len()..];
        let Some(is) = after_on.find(IS) else { continue };
        let ty = &after_on[is + IS.len()..];
        let ty_end = ty.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(ty.len());
        out.push(Conflict { field: &rest[..on], measurement: &after_on[..is], input_type: &ty[..ty_end] });
    }
    out
}

/// A field value's type, named as InfluxDB names it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Float,
    Integer,
    Unsigned,
    String,
    Boolean,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::Unsigned => "unsigned",
            FieldType::String => "string",
            FieldType::Boolean => "boolean",
        }
    }
}

/// The measurement (unescaped) and field keys (unescaped) with their value types of one line
/// of line protocol; `None` when the line does not scan. Tags are skipped: a type conflict
/// concerns the measurement and the field only.
pub fn scan_line(line: &[u8]) -> Option<(String, Vec<(String, FieldType)>)> {
    let mut i = 0;
    let (measurement, stop) = read_key(line, &mut i, b", ");
    if measurement.is_empty() {
        return None;
    }
    if stop == Some(b',') {
        // Tag set: up to the first unescaped space.
        while i < line.len() && line[i] != b' ' {
            i += if line[i] == b'\\' { 2 } else { 1 };
        }
    }
    if line.get(i) != Some(&b' ') {
        return None;
    }
    i += 1;
    let mut fields = Vec::new();
    loop {
        let (key, stop) = read_key(line, &mut i, b"=");
        if stop != Some(b'=') || key.is_empty() {
            return None;
        }
        i += 1;
        let ty = if line.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match line.get(i)? {
                    b'\\' => i += 2,
                    b'"' => {
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
            FieldType::String
        } else {
            let start = i;
            while i < line.len() && line[i] != b',' && line[i] != b' ' {
                i += 1;
            }
            match &line[start..i] {
                [] => return None,
                b"t" | b"T" | b"true" | b"True" | b"TRUE" | b"f" | b"F" | b"false" | b"False" | b"FALSE" => FieldType::Boolean,
                [.., b'i'] => FieldType::Integer,
                [.., b'u'] => FieldType::Unsigned,
                _ => FieldType::Float,
            }
        };
        fields.push((key, ty));
        match line.get(i) {
            Some(b',') => i += 1,
            _ => return Some((measurement, fields)),
        }
    }
}

/// Reads a measurement, tag or field key up to an unescaped byte of `stops`, unescaping
/// `\,`, `\=`, `\ ` and `\\`; leaves `i` on the stop byte.
fn read_key(line: &[u8], i: &mut usize, stops: &[u8]) -> (String, Option<u8>) {
    let mut key = Vec::new();
    while *i < line.len() {
        let b = line[*i];
        if stops.contains(&b) {
            return (String::from_utf8_lossy(&key).into_owned(), Some(b));
        }
        if b == b'\\' && matches!(line.get(*i + 1), Some(b',' | b'=' | b' ' | b'\\')) {
            key.push(line[*i + 1]);
            *i += 2;
        } else {
            key.push(b);
            *i += 1;
        }
    }
    (String::from_utf8_lossy(&key).into_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &'static str) -> Vec<&'static [u8]> {
        s.lines().map(str::as_bytes).collect()
    }

    fn ids(r: &Refusal) -> Vec<usize> {
        r.rejected.iter().copied().collect()
    }

    #[test]
    fn influxdb_1x_parse_errors_name_every_line() {
        // Verbatim from InfluxDB 1.6.7.
        let body = r#"{"error":"partial write: unable to parse 'bad line here': invalid field format\nunable to parse 'm x= 12': missing field value dropped=0"}"#;
        let l = lines("m,a=3 x=1.5 10\nbad line here\nm,a=3 x=2 11\nm x= 12");
        let r = identify(body, &l);
        assert!(r.partial);
        assert_eq!(ids(&r), [1, 3]);
        assert!(!r.message.contains('\n'));
    }

    #[test]
    fn quotes_inside_the_line_are_matched() {
        let body = r#"{"error":"partial write: unable to parse 'm2 s='x 2': invalid boolean dropped=0"}"#;
        let l = lines("m2 s=\"it's\" 1\nm2 s='x 2");
        assert_eq!(ids(&identify(body, &l)), [1]);
    }

    #[test]
    fn all_lines_unparseable_is_not_partial() {
        let body = r#"{"error":"unable to parse 'bad': missing fields\nunable to parse 'bad2': missing fields"}"#;
        let r = identify(body, &lines("bad\nbad2"));
        assert!(!r.partial);
        assert_eq!(ids(&r), [0, 1]);
    }

    #[test]
    fn field_type_conflicts_name_lines_by_measurement_field_and_type() {
        let body = r#"{"error":"partial write: field type conflict: input field \"x\" on measurement \"m\" is type string, already exists as type float dropped=2"}"#;
        let l = lines("m,a=1 x=\"s\" 5\nm,a=1 x=\"s2\",y=1i 6\nm,a=1 x=2 7\nn x=\"s\" 8\nm,a=1 y=\"x\" 9");
        let r = identify(body, &l);
        assert!(r.partial);
        assert_eq!(ids(&r), [0, 1]);
    }

    #[test]
    fn unidentifiable_refusals_name_nothing() {
        let r = identify(r#"{"error":"field type conflict"}"#, &lines("m x=1 1"));
        assert!(r.rejected.is_empty());
        assert_eq!(r.message, "field type conflict");
        let r = identify(r#"{"error":"partial write: points beyond retention policy dropped=1"}"#, &lines("m x=1 1"));
        assert!(r.partial && r.rejected.is_empty());
        let r = identify("<html>bad gateway</html>", &lines("m x=1 1"));
        assert_eq!(r.message, "<html>bad gateway</html>");
    }

    #[test]
    fn influxdb_2x_and_3x_bodies() {
        let l = lines("m x=1 1\nbroken\nm x=2 2");
        let v2 = r#"{"code":"invalid","message":"unable to parse 'broken': missing fields"}"#;
        assert_eq!(ids(&identify(v2, &l)), [1]);
        let v3 = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"broken","line_number":2,"error_message":"x"}]}"#;
        let r = identify(v3, &l);
        assert!(r.partial);
        assert_eq!(ids(&r), [1]);
        let v3_number_only = r#"{"error":"parsing failed","data":{"line_number":3,"error_message":"x"}}"#;
        assert_eq!(ids(&identify(v3_number_only, &l)), [2]);
    }

    #[test]
    fn scanning_escaped_lines() {
        let (m, f) = scan_line(br#"my\ meas\,x,t=a\ b x\=y="a \"q\", b",n=1i,u=2u,b=t,f=1.5 1"#).unwrap();
        assert_eq!(m, "my meas,x");
        let names: Vec<_> = f.iter().map(|(k, t)| (k.as_str(), t.name())).collect();
        assert_eq!(names, [("x=y", "string"), ("n", "integer"), ("u", "unsigned"), ("b", "boolean"), ("f", "float")]);
        assert_eq!(scan_line(b"nofields"), None);
        assert_eq!(scan_line(b"m x= 1"), None);
    }

    #[test]
    fn long_messages_are_shortened_on_a_char_boundary() {
        let s = "é".repeat(400);
        let short = one_line(&s, 501);
        assert!(short.ends_with("...") && short.len() <= 504);
    }
}
