//! Output: Go templates (`--format`), Docker's `table` format aligned as Go's
//! tabwriter (minimum width 10, padding 3, as the docker CLI), `json`, and the humanized
//! sizes and durations docker prints (go-units' rules).
//!
//! Templates are evaluated by the `gtmpl` crate (Go's text/template in Rust: fields,
//! pipelines, `range`, `if`, `with`, `index`, `len`, `printf`...) with docker's extra
//! functions (`json`, `join`, `split`, `upper`, `lower`, `title`, `truncate`, `pad`),
//! rather than a hand-written subset. gtmpl is vendored with two patches (see
//! vendor/gtmpl*/WHARF-PATCH.md) so that lists and maps print as Go's (`[a b]`,
//! `map[k:v]`), `range` over a map goes in key order, and a list row's `.Label "k"`
//! method works as on docker's formatter contexts. Two differences remain: `json`
//! writes object keys sorted by name (Go: a struct's in its field order), and a JSON
//! null prints `<nil>` where the docker CLI, which decodes known objects into typed
//! structs, prints an empty list `[]` or map `map[]` for a null slice or map field.

use std::collections::HashMap;

use gtmpl::{Context, Func, FuncError, Template};
use gtmpl_value::Value as TValue;
use serde_json::Value;

use super::CliError;

/// The key under which a list row carries its labels as a map, for its `.Label "k"`
/// method (docker's `.Labels` of a row is the `k=v,...` text); `json` leaves it out.
pub const LABEL_MAP: &str = "__LabelMap";

/// `.Label "key"` of a list row: the label's value ("" without it). On the header row
/// (no labels), the column title docker derives from the key: its last `.` part, with
/// `-` and `_` as spaces, upper-cased.
fn label_method(args: &[TValue]) -> Result<TValue, FuncError> {
    let key = arg_string(args, 1, "Label")?;
    match args.first() {
        Some(TValue::Map(row) | TValue::Object(row)) => match row.get(LABEL_MAP) {
            Some(TValue::Map(labels) | TValue::Object(labels)) => Ok(labels
                .get(&key)
                .cloned()
                .unwrap_or_else(|| TValue::String(String::new()))),
            _ => {
                let last = key.rsplit('.').next().unwrap_or(&key);
                Ok(TValue::String(last.replace(['-', '_'], " ").to_uppercase()))
            }
        },
        _ => Err(FuncError::Generic("Label: not called on a row".into())),
    }
}

/// A list row's `.Labels` as docker prints it (`k=v,...`, sorted by key).
pub fn labels_text(labels: Option<&Value>) -> String {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return String::new();
    };
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// serde_json -> gtmpl for a rendered object: a map gets the `Label` method.
fn to_row_value(value: &Value) -> TValue {
    match to_template_value(value) {
        TValue::Map(mut map) => {
            map.entry("Label".to_string())
                .or_insert_with(|| TValue::from(label_method as Func));
            TValue::Map(map)
        }
        other => other,
    }
}

/// serde_json -> gtmpl, with objects as maps (a missing key prints `<no value>`, as
/// docker's templates over decoded JSON).
pub fn to_template_value(value: &Value) -> TValue {
    match value {
        Value::Null => TValue::Nil,
        Value::Bool(b) => TValue::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                TValue::from(i)
            } else if let Some(u) = n.as_u64() {
                TValue::from(u)
            } else {
                TValue::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => TValue::String(s.clone()),
        Value::Array(items) => TValue::Array(items.iter().map(to_template_value).collect()),
        Value::Object(map) => TValue::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_template_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// gtmpl -> serde_json (for `json`).
pub fn from_template_value(value: &TValue) -> Value {
    match value {
        TValue::NoValue | TValue::Nil | TValue::Function(_) => Value::Null,
        TValue::Bool(b) => Value::Bool(*b),
        TValue::String(s) => Value::String(s.clone()),
        TValue::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        TValue::Array(items) => Value::Array(items.iter().map(from_template_value).collect()),
        TValue::Object(map) | TValue::Map(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| k.as_str() != LABEL_MAP && !matches!(v, TValue::Function(_)))
                .map(|(k, v)| (k.clone(), from_template_value(v)))
                .collect(),
        ),
    }
}

fn arg_string(args: &[TValue], i: usize, name: &str) -> Result<String, FuncError> {
    match args.get(i) {
        Some(TValue::String(s)) => Ok(s.clone()),
        Some(other) => Ok(printed(other)),
        None => Err(FuncError::AtLeastXArgs(name.into(), i + 1)),
    }
}

/// How a value prints: strings as they are, lists and maps as JSON.
fn printed(value: &TValue) -> String {
    match value {
        TValue::String(s) => s.clone(),
        TValue::NoValue => "<no value>".into(),
        TValue::Nil => "<nil>".into(),
        TValue::Array(_) | TValue::Map(_) | TValue::Object(_) => {
            from_template_value(value).to_string()
        }
        other => other.to_string(),
    }
}

fn json(args: &[TValue]) -> Result<TValue, FuncError> {
    let value = args
        .first()
        .ok_or_else(|| FuncError::ExactlyXArgs("json".into(), 1))?;
    Ok(TValue::String(from_template_value(value).to_string()))
}

fn join(args: &[TValue]) -> Result<TValue, FuncError> {
    let sep = arg_string(args, 1, "join")?;
    match args.first() {
        Some(TValue::Array(items)) => Ok(TValue::String(
            items.iter().map(printed).collect::<Vec<_>>().join(&sep),
        )),
        Some(TValue::Nil) | Some(TValue::NoValue) => Ok(TValue::String(String::new())),
        _ => Err(FuncError::Generic(
            "join: the first argument must be a list".into(),
        )),
    }
}

fn split(args: &[TValue]) -> Result<TValue, FuncError> {
    let text = arg_string(args, 0, "split")?;
    let sep = arg_string(args, 1, "split")?;
    Ok(TValue::Array(
        text.split(sep.as_str())
            .map(|s| TValue::String(s.into()))
            .collect(),
    ))
}

fn upper(args: &[TValue]) -> Result<TValue, FuncError> {
    Ok(TValue::String(arg_string(args, 0, "upper")?.to_uppercase()))
}

fn lower(args: &[TValue]) -> Result<TValue, FuncError> {
    Ok(TValue::String(arg_string(args, 0, "lower")?.to_lowercase()))
}

fn title(args: &[TValue]) -> Result<TValue, FuncError> {
    let text = arg_string(args, 0, "title")?;
    let mut out = String::with_capacity(text.len());
    let mut start = true;
    for c in text.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(TValue::String(out))
}

fn count_arg(args: &[TValue], name: &str) -> Result<usize, FuncError> {
    match args.get(1) {
        Some(TValue::Number(n)) => n.as_u64().map(|n| n as usize).ok_or_else(|| {
            FuncError::Generic(format!("{name}: the length must be a positive number"))
        }),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 2)),
    }
}

fn truncate(args: &[TValue]) -> Result<TValue, FuncError> {
    let text = arg_string(args, 0, "truncate")?;
    let n = count_arg(args, "truncate")?;
    Ok(TValue::String(text.chars().take(n).collect()))
}

fn pad(args: &[TValue]) -> Result<TValue, FuncError> {
    let text = arg_string(args, 0, "pad")?;
    let n = count_arg(args, "pad")?;
    let fill = " ".repeat(n);
    Ok(TValue::String(format!("{fill}{text}{fill}")))
}

/// Go's `index`, with a missing map key giving an empty string, as docker's templates
/// over its typed maps (labels) print.
fn index(args: &[TValue]) -> Result<TValue, FuncError> {
    let mut value = args
        .first()
        .cloned()
        .ok_or_else(|| FuncError::AtLeastXArgs("index".into(), 2))?;
    for key in &args[1..] {
        value = match (&value, key) {
            (TValue::Map(map) | TValue::Object(map), TValue::String(k)) => map
                .get(k)
                .cloned()
                .unwrap_or_else(|| TValue::String(String::new())),
            (TValue::Array(items), TValue::Number(n)) => {
                let i = n
                    .as_u64()
                    .ok_or_else(|| FuncError::Generic("index: a negative index".into()))?
                    as usize;
                items
                    .get(i)
                    .cloned()
                    .ok_or_else(|| FuncError::Generic(format!("index out of range: {i}")))?
            }
            (TValue::Nil | TValue::NoValue, _) => TValue::String(String::new()),
            _ => {
                return Err(FuncError::Generic(format!(
                    "can't index item of type {value:?} with {key:?}"
                )))
            }
        };
    }
    Ok(value)
}

const FUNCS: &[(&str, Func)] = &[
    ("index", index as Func),
    ("json", json as Func),
    ("join", join as Func),
    ("split", split as Func),
    ("upper", upper as Func),
    ("lower", lower as Func),
    ("title", title as Func),
    ("truncate", truncate as Func),
    ("pad", pad as Func),
];

/// A parsed `--format`.
pub struct Format {
    template: Template,
    /// `table ...`: a header row, and columns aligned.
    pub table: bool,
}

impl Format {
    /// Parses `text` (`json`, `table ...`, or a template); `\t` and `\n` written
    /// literally mean a tab and a newline, as docker's list formats.
    pub fn parse(text: &str) -> Result<Format, CliError> {
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) => (true, rest.trim_start().to_string()),
            None => (false, text.to_string()),
        };
        let body = if body.trim() == "json" {
            "{{json .}}".to_string()
        } else {
            body
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        Format::parse_raw(&body, table)
    }

    /// A template used as it is (inspect's `--format`).
    pub fn parse_raw(text: &str, table: bool) -> Result<Format, CliError> {
        let mut template = Template::default();
        template.add_funcs(FUNCS);
        template
            .parse(text)
            .map_err(|err| CliError::usage(format!("template parsing error: {err}")))?;
        Ok(Format { template, table })
    }

    pub fn render(&self, value: &Value) -> Result<String, CliError> {
        self.template
            .render(&Context::from(to_row_value(value)))
            .map_err(|err| CliError::usage(format!("template: executing the --format: {err}")))
    }

    /// Renders each row (a line each), after a header row rendered over `headers`
    /// (field -> column title) when this is a table; aligned when a table.
    pub fn render_rows(&self, rows: &[Value], headers: &Value) -> Result<String, CliError> {
        let mut out = String::new();
        if self.table {
            out.push_str(&self.render(headers)?);
            out.push('\n');
        }
        for row in rows {
            out.push_str(&self.render(row)?);
            out.push('\n');
        }
        Ok(if self.table { align(&out) } else { out })
    }
}

/// Go's tabwriter as docker configures it (minwidth 10, padding 3, spaces): each
/// tab-terminated cell is padded to its column's widest cell plus 3, at least 10.
pub fn align(text: &str) -> String {
    align_min(text, 10)
}

/// As [`align`] with columns of at least `min_width`.
pub fn align_min(text: &str, min_width: usize) -> String {
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        // The last cell of a line is not tab-terminated: it takes no column width.
        for (i, cell) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let w = (cell.chars().count() + 3).max(min_width);
            if widths.len() <= i {
                widths.push(w);
            } else if widths[i] < w {
                widths[i] = w;
            }
        }
    }
    let mut out = String::new();
    for cells in &lines {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// The header row: each field's column title.
pub fn headers(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
    )
}

/// go-units' HumanSizeWithPrecision(size, 3): decimal units, 3 significant digits.
pub fn human_size(size: f64) -> String {
    human_size_precision(size, 3)
}

/// go-units' HumanSizeWithPrecision (HumanSize is precision 4).
pub fn human_size_precision(size: f64, precision: usize) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut size = size;
    let mut i = 0;
    while size >= 1000.0 && i < UNITS.len() - 1 {
        size /= 1000.0;
        i += 1;
    }
    format!("{}{}", go_g(size, precision), UNITS[i])
}

/// A UNIX time as Go's `time.Time.String()` in local time (the zone as "UTC" when the
/// offset is zero: chrono has no zone abbreviations).
pub fn go_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| {
            let local = t.with_timezone(&chrono::Local);
            if local.offset().local_minus_utc() == 0 {
                local.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
            } else {
                local.format("%Y-%m-%d %H:%M:%S %z %:z").to_string()
            }
        })
        .unwrap_or_default()
}

/// go-units' BytesSize: binary units (KiB, MiB), 4 significant digits (stats).
pub fn bytes_size(size: f64) -> String {
    const UNITS: [&str; 9] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
    let mut size = size;
    let mut i = 0;
    while size >= 1024.0 && i < UNITS.len() - 1 {
        size /= 1024.0;
        i += 1;
    }
    format!("{}{}", go_g(size, 4), UNITS[i])
}

/// Go's `%.<p>g` for the non-negative magnitudes sizes have.
fn go_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let digits = value.abs().log10().floor() as i32 + 1;
    let decimals = (precision as i32 - digits).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// go-units' HumanDuration.
pub fn human_duration(seconds: i64) -> String {
    let hours_f = seconds as f64 / 3600.0;
    let minutes = seconds / 60;
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    let hours = (hours_f + 0.5) as i64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", (hours_f as i64) / 24 / 365)
}

/// Seconds since the UNIX time `then`.
pub fn since(then: i64) -> i64 {
    chrono::Utc::now().timestamp() - then
}

/// "<duration> ago", as docker's CREATED column.
pub fn ago(then: i64) -> String {
    format!("{} ago", human_duration(since(then)))
}

/// An RFC 3339 time as a UNIX time (0 when unreadable).
pub fn parse_time(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .unwrap_or(0)
}

/// docker's Ellipsis: at most `n` characters, the last one "…" when cut.
pub fn ellipsis(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut out: String = text.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The short form of an ID (12 hex digits, without `sha256:`).
pub fn short_id(id: &str) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.chars().take(12).collect()
}

/// Writes `value` as docker's inspect does: a JSON array, indented by 4 spaces.
pub fn pretty_json(value: &Value) -> String {
    use serde::Serialize;
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serializing a Value into memory cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_as_docker() {
        assert_eq!(human_size(4_261_000.0), "4.26MB");
        assert_eq!(human_size(999.0), "999B");
        assert_eq!(human_size(1_000.0), "1kB");
        assert_eq!(human_size(12_345.0), "12.3kB");
        assert_eq!(bytes_size(1536.0), "1.5KiB");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 24 * 3600), "3 days");
        assert_eq!(
            ellipsis("sleep 600 and some more", 20),
            "sleep 600 and some …"
        );
    }

    #[test]
    fn templates_tables_and_json() {
        let value = serde_json::json!({"State": {"Status": "running"}, "Labels": {"a": "b"}, "List": ["x", "y"]});
        let f = Format::parse(
            "{{.State.Status}} {{index .Labels \"a\"}} {{json .List}} {{join .List \",\"}}",
        )
        .unwrap();
        assert_eq!(f.render(&value).unwrap(), "running b [\"x\",\"y\"] x,y");
        let f = Format::parse("{{range .List}}<{{.}}>{{end}}").unwrap();
        assert_eq!(f.render(&value).unwrap(), "<x><y>");
        let f = Format::parse("table {{.ID}}\\t{{.Name}}").unwrap();
        let rows = vec![serde_json::json!({"ID": "abc", "Name": "n1"})];
        let out = f
            .render_rows(
                &rows,
                &headers(&[("ID", "CONTAINER ID"), ("Name", "NAMES")]),
            )
            .unwrap();
        assert_eq!(out, "CONTAINER ID   NAMES\nabc            n1\n");
        let f = Format::parse("json").unwrap();
        assert_eq!(f.render(&serde_json::json!({"a": 1})).unwrap(), "{\"a\":1}");
    }

    #[test]
    fn go_printing_sorted_range_and_the_label_method() {
        let value = serde_json::json!({
            "Env": ["A=1", "B=2"],
            "Labels": {"z": "26", "a": "1", "m": "13"},
            "Nothing": null,
            LABEL_MAP: {"com.example.tier": "web"},
        });
        let render = |text: &str| Format::parse(text).unwrap().render(&value).unwrap();
        assert_eq!(render("{{.Env}}"), "[A=1 B=2]");
        assert_eq!(render("{{.Labels}}"), "map[a:1 m:13 z:26]");
        assert_eq!(render("{{.Nothing}}"), "<nil>");
        assert_eq!(
            render("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}"),
            "a=1;m=13;z=26;"
        );
        assert_eq!(
            render("{{.Label \"com.example.tier\"}}|{{.Label \"none\"}}"),
            "web|"
        );
        // `json` shows neither the method nor the map behind it.
        let json = render("{{json .}}");
        assert!(
            !json.contains("Label\"") && !json.contains(LABEL_MAP),
            "{json}"
        );
        let f = Format::parse("table {{.Label \"com.example.tier_name\"}}").unwrap();
        let out = f
            .render_rows(std::slice::from_ref(&value), &headers(&[]))
            .unwrap();
        assert_eq!(out, "TIER NAME\n\n");
    }
}
