//! Dockerfile parsing and variable expansion for the classic builder.
//!
//! Ported from moby/buildkit's `parser`, `instructions` and `shell` packages so
//! that wharf accepts, rejects and expands Dockerfiles exactly like Docker.
//! Parsing is split like moby: a syntactic pass over the whole file, then a
//! typed check of every instruction (so bad flags or arity fail before any
//! step runs); expansion happens per instruction at build time via
//! [`Instruction::command`], with the variables in effect at that point.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// A parse error: `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dockerfile parse error line {}: {}",
            self.line, self.message
        )
    }
}

impl std::error::Error for ParseError {}

fn perr(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// From the `# escape=` directive; `\` by default.
    pub escape: char,
    /// The `# syntax=` directive, recorded only (the classic builder ignores it).
    pub syntax: Option<String>,
    /// ARG instructions before the first FROM (usable in FROM lines only).
    pub meta_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub from: Instruction,
    /// The instructions after FROM, in order.
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Line of the instruction's first line (1-based).
    pub line: usize,
    /// Lowercase keyword: "from", "run", ...
    pub keyword: String,
    /// The instruction as written, continuations joined, trimmed; this is
    /// what `Step N/M : ...` prints.
    pub original: String,
    /// `--name=value` flags before the args; a flag without `=` has value "".
    pub flags: Vec<(String, String)>,
    /// Args came in JSON (exec) form.
    pub json: bool,
    /// Unexpanded args. JSON form: the elements. Shell form RUN/CMD/
    /// ENTRYPOINT/SHELL: one element, the rest of the line. ENV/LABEL:
    /// flattened key, value pairs (quotes kept). ARG: the words (`k` or
    /// `k=v`). FROM/EXPOSE/COPY/ADD/VOLUME: whitespace-split words.
    /// WORKDIR/USER/STOPSIGNAL/MAINTAINER: the rest of the line.
    /// HEALTHCHECK: the type (`CMD`/`NONE`) then the command as for RUN.
    /// ONBUILD: the trigger's lowercase keyword then its args.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run(CommandLine),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Shell(Vec<String>),
    /// `from` is not expanded (the classic builder looks it up verbatim).
    Copy {
        sources: Vec<String>,
        dest: String,
        from: Option<String>,
        chown: Option<String>,
        chmod: Option<String>,
    },
    Add {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
    },
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    /// None for `HEALTHCHECK NONE`.
    Healthcheck(Option<Healthcheck>),
    /// The trigger instruction text, e.g. "RUN echo hi".
    Onbuild(String),
    Maintainer(String),
}

/// Durations are nanoseconds; 0 means unset (inherit the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["CMD", ...]` or `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub start_period_ns: i64,
    pub retries: i64,
}

pub use super::shell::{expand_word, expand_words, Vars};

// ---------------------------------------------------------------- parser

/// Go's `[\t\v\f\r ]` (moby's reWhitespace / tokenWhitespace).
fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// RE2's `\s`.
fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

struct Directives {
    escape: char,
    syntax: Option<String>,
    done: bool,
    seen: HashSet<String>,
}

impl Directives {
    /// moby's possibleParserDirective: directives are only honoured until the
    /// first line that is not one (a comment, blank line or instruction).
    fn check(&mut self, line: &str) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        let Some((key, value)) = match_directive(line) else {
            self.done = true;
            return Ok(());
        };
        let key = key.to_ascii_lowercase();
        if key != "escape" && key != "syntax" {
            self.done = true;
            return Ok(());
        }
        if !self.seen.insert(key.clone()) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        if key == "syntax" {
            self.syntax = Some(value.to_string());
        } else {
            match value {
                "`" => self.escape = '`',
                "\\" => self.escape = '\\',
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn match_directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_re_space);
    let key_len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..]
        .trim_start_matches(is_re_space)
        .strip_prefix('=')?;
    let value = value.trim_matches(is_re_space);
    (!value.is_empty()).then_some((key, value))
}

/// Strips the line-continuation escape (plus trailing blanks); false = continues.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(l) => (l, false),
        None => (line, true),
    }
}

/// Parses a Dockerfile (no variable expansion; see [`Instruction::command`]).
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let (d, parsed, nlines) = parse_lines(text)?;
    if parsed.is_empty() {
        let msg = if text.is_empty() {
            "the Dockerfile (Dockerfile) cannot be empty"
        } else {
            "file with no instructions"
        };
        return Err(perr(nlines.max(1), msg));
    }

    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (ins, flags) in parsed {
        ins.typed(&flags).map_err(|m| perr(ins.line, m))?;
        if ins.keyword == "from" {
            stages.push(Stage {
                from: ins,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(ins);
        } else if ins.keyword == "arg" {
            meta_args.push(ins);
        } else {
            return Err(perr(ins.line, "no build stage in current context"));
        }
    }
    if stages.is_empty() {
        return Err(perr(
            nlines.max(1),
            "No image was generated. Is your Dockerfile empty?",
        ));
    }
    Ok(Dockerfile {
        escape: d.escape,
        syntax: d.syntax,
        meta_args,
        stages,
    })
}

/// Parses one ONBUILD trigger taken from a base image, as moby does before
/// running it: a one-instruction Dockerfile with the default escape.
pub fn parse_trigger(text: &str) -> Result<Instruction, ParseError> {
    let (_, mut parsed, nlines) = parse_lines(text)?;
    let Some((ins, flags)) = parsed.pop().filter(|_| parsed.is_empty()) else {
        return Err(perr(
            nlines.max(1),
            "onbuild trigger should be a single expression",
        ));
    };
    ins.typed(&flags).map_err(|m| perr(ins.line, m))?;
    Ok(ins)
}

type ParsedLine = (Instruction, Vec<(String, String, bool)>);

/// moby's parser.Parse: directives, comments and continuations, then each
/// logical line through [`parse_line`]; also returns the physical line count.
fn parse_lines(text: &str) -> Result<(Directives, Vec<ParsedLine>, usize), ParseError> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut d = Directives {
        escape: '\\',
        syntax: None,
        done: false,
        seen: HashSet::new(),
    };
    let mut parsed = Vec::new();
    let mut idx = 0;
    while idx < lines.len() {
        let mut raw = lines[idx];
        if idx == 0 {
            raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        }
        idx += 1;
        let start = idx;
        let trimmed = raw.trim_start();
        d.check(trimmed).map_err(|m| perr(start, m))?;
        let first = if trimmed.starts_with('#') {
            ""
        } else {
            trimmed
        };
        let (first, mut eol) = trim_continuation(first, d.escape);
        if eol && first.is_empty() {
            continue;
        }
        let mut line = first.to_string();
        while !eol && idx < lines.len() {
            let raw = lines[idx];
            idx += 1;
            // Comment and blank lines inside a continuation are skipped.
            if raw.trim_start().starts_with('#') || raw.trim_start().is_empty() {
                continue;
            }
            let (part, e) = trim_continuation(raw, d.escape);
            line.push_str(part);
            eol = e;
        }
        let r = parse_line(&line, d.escape).map_err(|m| perr(start, m))?;
        let flags: Vec<_> = r.flags.iter().map(|f| split_flag(f)).collect();
        let ins = Instruction {
            line: start,
            keyword: r.keyword,
            original: line.trim().to_string(),
            flags: flags
                .iter()
                .map(|(k, v, _)| (k.clone(), v.clone()))
                .collect(),
            json: r.json,
            args: r.args,
        };
        parsed.push((ins, flags));
    }
    Ok((d, parsed, lines.len()))
}

struct RawInstruction {
    keyword: String,
    flags: Vec<String>,
    args: Vec<String>,
    json: bool,
}

/// `--name=value` -> (name, value, had '=').
fn split_flag(raw: &str) -> (String, String, bool) {
    let f = raw.strip_prefix("--").unwrap_or(raw);
    match f.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string(), true),
        None => (f.to_string(), String::new(), false),
    }
}

/// moby's newNodeFromLine: keyword, leading `--flags`, then the per-keyword
/// argument parser.
fn parse_line(line: &str, escape: char) -> Result<RawInstruction, String> {
    let t = line.trim();
    let (cmd, rest) = match t.find(is_token_ws) {
        Some(i) => (&t[..i], Some(t[i..].trim_start_matches(is_token_ws))),
        None => (t, None),
    };
    let keyword = cmd.to_lowercase();
    let (rest, flags) = rest.map(extract_builder_flags).unwrap_or_default();
    let rest = rest.trim();
    let one = |r: &str| {
        if r.is_empty() {
            vec![]
        } else {
            vec![r.to_string()]
        }
    };
    let (args, json) = match keyword.as_str() {
        "add" | "copy" | "volume" => match parse_json(rest)? {
            Some(a) => (a, true),
            None => (split_ws(rest), false),
        },
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(rest)?,
        "env" | "label" => (
            parse_name_val(rest, &keyword.to_uppercase(), escape)?,
            false,
        ),
        "arg" => (parse_words(rest, escape), false),
        "expose" | "from" => (split_ws(rest), false),
        "maintainer" | "stopsignal" | "user" | "workdir" => (one(rest), false),
        "healthcheck" => {
            let (typ, cmd) = match rest.find(char::is_whitespace) {
                Some(i) => (&rest[..i], rest[i..].trim_start()),
                None => (rest, ""),
            };
            let (mut args, json) = parse_maybe_json(cmd)?;
            if !typ.is_empty() {
                args.insert(0, typ.to_string());
            }
            (args, json)
        }
        "onbuild" if rest.is_empty() => (vec![], false),
        "onbuild" => {
            let sub = parse_line(rest, escape)?;
            (
                std::iter::once(sub.keyword).chain(sub.args).collect(),
                false,
            )
        }
        // Unknown keywords fail in the typed pass, after syntax errors.
        _ => (vec![], false),
    };
    Ok(RawInstruction {
        keyword,
        flags,
        args,
        json,
    })
}

fn split_ws(rest: &str) -> Vec<String> {
    rest.split(is_token_ws)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Ok(None) when `rest` is not a JSON array (so it is shell form); an error
/// only for a JSON array holding non-strings, as moby.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, String> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(rest) else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(
                "when using JSON array syntax, arrays must be comprised of strings only"
                    .to_string(),
            ),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((vec![], false));
    }
    Ok(match parse_json(rest)? {
        Some(a) => (a, true),
        None => (vec![rest.to_string()], false),
    })
}

/// ENV/LABEL: `k=v ...` (quotes kept for expansion) or the old `k v` form.
fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(vec![]);
    };
    if !first.contains('=') {
        let Some(i) = rest.find(is_token_ws) else {
            return Err(format!("{key} must have two arguments"));
        };
        let value = rest[i..].trim_start_matches(is_token_ws);
        return Ok(vec![rest[..i].to_string(), value.to_string()]);
    }
    let mut out = Vec::new();
    for w in &words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            ));
        };
        out.push(k.to_string());
        out.push(v.to_string());
    }
    Ok(out)
}

/// moby's parseWords: splits on unquoted whitespace, keeping quotes and escapes.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut pos = 0;
    while pos < chars.len() {
        let mut ch = chars[pos];
        let at_end = pos + 1 == chars.len();
        pos += 1;
        match phase {
            Phase::Spaces if ch.is_whitespace() => continue,
            Phase::Spaces | Phase::Word if ch.is_whitespace() => {
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                phase = Phase::Spaces;
                continue;
            }
            Phase::Spaces | Phase::Word => {
                phase = Phase::Word;
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if at_end {
                        continue;
                    }
                    word.push(ch);
                    ch = chars[pos];
                    pos += 1;
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                }
                if ch == escape && q != '\'' {
                    if at_end {
                        phase = Phase::Word;
                        continue;
                    }
                    word.push(ch);
                    ch = chars[pos];
                    pos += 1;
                }
            }
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// moby's extractBuilderFlags: leading `--flag=value` words (quotes and `\`
/// processed) and the rest of the line. A bare `--` ends the flags.
fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos < n {
        let (off, ch) = chars[pos];
        pos += 1;
        if !in_word {
            if ch.is_whitespace() {
                continue;
            }
            if ch != '-' || chars.get(pos).map(|c| c.1) != Some('-') {
                return (line[off..].to_string(), words);
            }
            in_word = true;
        }
        match quote {
            None if ch.is_whitespace() => {
                if word == "--" {
                    return (line[off..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                in_word = false;
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                blank_ok = true;
            }
            Some(q) if ch == q => quote = None,
            _ if ch == '\\' => {
                if pos < n {
                    word.push(chars[pos].1);
                    pos += 1;
                } else {
                    quote = None;
                }
            }
            _ => word.push(ch),
        }
    }
    if in_word && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    (String::new(), words)
}

// ---------------------------------------------------------------- typed

impl Instruction {
    /// The typed instruction with words expanded using `vars` (moby expands
    /// ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR ARG only).
    pub fn command(&self, vars: &dyn Vars, escape: char) -> Result<Command, String> {
        let flags: Vec<_> = self
            .flags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), true))
            .collect();
        expand_command(self.typed(&flags)?, vars, escape)
    }

    /// moby's instructions.ParseInstruction: validation and typing, no expansion.
    fn typed(&self, flags: &[(String, String, bool)]) -> Result<Command, String> {
        let a = &self.args;
        let kw = self.keyword.to_uppercase();
        let need_one = || {
            if a.len() == 1 {
                Ok(a[0].clone())
            } else {
                Err(format!("{kw} requires exactly one argument"))
            }
        };
        let at_least_one = || {
            if a.is_empty() {
                Err(format!("{kw} requires at least one argument"))
            } else {
                Ok(())
            }
        };
        let no_flags = || parse_flags(flags, &[]);
        let cmdline = || {
            no_flags()?;
            Ok::<_, String>(match (self.json, a.first()) {
                (false, Some(line)) => CommandLine::Shell(line.clone()),
                _ => CommandLine::Exec(a.clone()),
            })
        };
        Ok(match self.keyword.as_str() {
            "from" => {
                let name = stage_name(a)?;
                let mut f = parse_flags(flags, &["platform"])?;
                Command::From {
                    image: a[0].clone(),
                    name,
                    platform: f.remove("platform"),
                }
            }
            "run" if !self.json && a.is_empty() => {
                return Err("RUN requires at least one argument".into())
            }
            "run" => Command::Run(cmdline()?),
            "cmd" => Command::Cmd(cmdline()?),
            "entrypoint" => Command::Entrypoint(cmdline()?),
            "shell" => {
                no_flags()?;
                at_least_one()?;
                if !self.json {
                    return Err("SHELL requires the arguments to be in JSON form".into());
                }
                Command::Shell(a.clone())
            }
            "copy" | "add" => {
                if a.len() < 2 {
                    return Err(format!(
                        "{kw} requires at least two arguments, but only one was provided. Destination could not be determined."
                    ));
                }
                let allowed: &[&str] = if kw == "COPY" {
                    &["chown", "from", "chmod"]
                } else {
                    &["chown", "chmod"]
                };
                let mut f = parse_flags(flags, allowed)?;
                let (sources, dest) = (a[..a.len() - 1].to_vec(), a[a.len() - 1].clone());
                let (chown, chmod) = (f.remove("chown"), f.remove("chmod"));
                match f.remove("from") {
                    from if kw == "COPY" => Command::Copy {
                        sources,
                        dest,
                        from,
                        chown,
                        chmod,
                    },
                    _ => Command::Add {
                        sources,
                        dest,
                        chown,
                        chmod,
                    },
                }
            }
            "env" | "label" => {
                no_flags()?;
                at_least_one()?;
                if !a.len().is_multiple_of(2) {
                    return Err(format!("Bad input to {kw}, too many arguments"));
                }
                let mut kvs = Vec::new();
                for p in a.chunks(2) {
                    if p[0].is_empty() {
                        return Err(format!("{kw} names can not be blank"));
                    }
                    kvs.push((p[0].clone(), p[1].clone()));
                }
                if kw == "ENV" {
                    Command::Env(kvs)
                } else {
                    Command::Label(kvs)
                }
            }
            "arg" => {
                at_least_one()?;
                let mut out = Vec::new();
                for w in a {
                    let kv = match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w.clone(), None),
                    };
                    if kv.0.is_empty() {
                        return Err("ARG names can not be blank".into());
                    }
                    out.push(kv);
                }
                Command::Arg(out)
            }
            "workdir" | "user" | "maintainer" => {
                let v = need_one()?;
                no_flags()?;
                match kw.as_str() {
                    "WORKDIR" => Command::Workdir(v),
                    "USER" => Command::User(v),
                    _ => Command::Maintainer(v),
                }
            }
            "stopsignal" => Command::StopSignal(need_one()?),
            "expose" => {
                at_least_one()?;
                no_flags()?;
                Command::Expose(a.clone())
            }
            "volume" => {
                at_least_one()?;
                no_flags()?;
                let vols: Vec<String> = a.iter().map(|v| v.trim().to_string()).collect();
                if vols.iter().any(String::is_empty) {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                Command::Volume(vols)
            }
            "healthcheck" => Command::Healthcheck(self.healthcheck(flags)?),
            "onbuild" => {
                at_least_one()?;
                no_flags()?;
                let trigger = a[0].to_uppercase();
                match trigger.as_str() {
                    "ONBUILD" => {
                        return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into())
                    }
                    "MAINTAINER" | "FROM" => {
                        return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"))
                    }
                    _ => {}
                }
                let o = self.original.trim_start_matches(is_re_space);
                let expr = match o.get(..7) {
                    Some(p) if p.eq_ignore_ascii_case("onbuild") => {
                        o[7..].trim_start_matches(is_re_space)
                    }
                    _ => o,
                };
                Command::Onbuild(expr.to_string())
            }
            _ => return Err(format!("unknown instruction: {kw}")),
        })
    }

    fn healthcheck(&self, flags: &[(String, String, bool)]) -> Result<Option<Healthcheck>, String> {
        let Some(typ) = self.args.first().map(|t| t.to_uppercase()) else {
            return Err("HEALTHCHECK requires at least one argument".into());
        };
        let rest = &self.args[1..];
        if typ == "NONE" {
            if !rest.is_empty() {
                return Err("HEALTHCHECK NONE takes no arguments".into());
            }
            return Ok(None);
        }
        let f = parse_flags(flags, &["interval", "timeout", "start-period", "retries"])?;
        if typ != "CMD" {
            return Err(format!("Unknown type {typ:?} in HEALTHCHECK (try CMD)"));
        }
        if rest.is_empty() {
            return Err("Missing command after HEALTHCHECK CMD".into());
        }
        let mut test = vec![if self.json { "CMD" } else { "CMD-SHELL" }.to_string()];
        if self.json {
            test.extend(rest.iter().cloned());
        } else {
            test.push(rest.join(" "));
        }
        let interval = |name: &str| -> Result<i64, String> {
            let Some(v) = f.get(name).filter(|v| !v.is_empty()) else {
                return Ok(0);
            };
            let d = parse_go_duration(v)?;
            if d < 1_000_000 {
                return Err(format!("Interval {name:?} cannot be less than 1ms"));
            }
            Ok(d)
        };
        let retries = match f.get("retries").filter(|v| !v.is_empty()) {
            None => 0,
            Some(v) => {
                let r: i32 = v.parse().map_err(|e: std::num::ParseIntError| {
                    let why = match e.kind() {
                        std::num::IntErrorKind::PosOverflow
                        | std::num::IntErrorKind::NegOverflow => "value out of range",
                        _ => "invalid syntax",
                    };
                    format!("strconv.ParseInt: parsing {v:?}: {why}")
                })?;
                if r < 1 {
                    return Err(format!("--retries must be at least 1 (not {r})"));
                }
                i64::from(r)
            }
        };
        Ok(Some(Healthcheck {
            test,
            interval_ns: interval("interval")?,
            timeout_ns: interval("timeout")?,
            start_period_ns: interval("start-period")?,
            retries,
        }))
    }
}

/// moby's BFlags.Parse for string flags; empty values read as unset.
fn parse_flags(
    flags: &[(String, String, bool)],
    allowed: &[&str],
) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (name, value, has_eq) in flags {
        if !allowed.contains(&name.as_str()) {
            return Err(format!("Unknown flag: {name}"));
        }
        if out.contains_key(name) {
            return Err(format!("Duplicate flag specified: {name}"));
        }
        if !has_eq {
            return Err(format!("Missing a value on flag: {name}"));
        }
        out.insert(name.clone(), value.clone());
    }
    out.retain(|_, v| !v.is_empty());
    Ok(out)
}

fn stage_name(args: &[String]) -> Result<Option<String>, String> {
    if args.len() == 3 && args[1].eq_ignore_ascii_case("as") {
        let name = args[2].to_lowercase();
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !valid {
            return Err(format!(
                "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                args[2]
            ));
        }
        return Ok(Some(name));
    }
    if args.len() != 1 {
        return Err("FROM requires either one or three arguments".into());
    }
    Ok(None)
}

fn expand_command(cmd: Command, vars: &dyn Vars, esc: char) -> Result<Command, String> {
    let w = |s: &str| expand_word(s, vars, esc);
    let all = |v: Vec<String>| v.iter().map(|s| w(s)).collect::<Result<Vec<_>, _>>();
    let opt = |o: Option<String>| -> Result<Option<String>, String> {
        Ok(match o {
            Some(s) => Some(w(&s)?).filter(|s| !s.is_empty()),
            None => None,
        })
    };
    let kvs = |v: Vec<(String, String)>| {
        v.iter()
            .map(|(k, v)| Ok((w(k)?, w(v)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(match cmd {
        Command::From {
            image,
            name,
            platform,
        } => Command::From {
            image: w(&image)?,
            name,
            platform: opt(platform)?,
        },
        Command::Copy {
            sources,
            dest,
            from,
            chown,
            chmod,
        } => Command::Copy {
            sources: all(sources)?,
            dest: w(&dest)?,
            from,
            chown: opt(chown)?,
            chmod: opt(chmod)?,
        },
        Command::Add {
            sources,
            dest,
            chown,
            chmod,
        } => Command::Add {
            sources: all(sources)?,
            dest: w(&dest)?,
            chown: opt(chown)?,
            chmod: opt(chmod)?,
        },
        Command::Env(v) => Command::Env(kvs(v)?),
        Command::Label(v) => Command::Label(kvs(v)?),
        Command::Arg(v) => Command::Arg(
            v.into_iter()
                .map(|(k, d)| Ok((w(&k)?, d.map(|d| w(&d)).transpose()?)))
                .collect::<Result<_, String>>()?,
        ),
        Command::Workdir(p) => Command::Workdir(w(&p)?),
        Command::User(u) => Command::User(w(&u)?),
        Command::StopSignal(s) => Command::StopSignal(w(&s)?),
        Command::Volume(v) => Command::Volume(all(v)?),
        Command::Expose(ports) => {
            let mut out = Vec::new();
            for p in ports {
                out.extend(expand_words(&p, vars, esc)?);
            }
            Command::Expose(out)
        }
        other => other,
    })
}

/// Go's time.ParseDuration, in nanoseconds.
fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    const MAX: u64 = 1 << 63;
    let (neg, mut s) = match orig.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, orig.strip_prefix('+').unwrap_or(orig)),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let il = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = if il > 0 {
            s[..il].parse().map_err(|_| invalid())?
        } else {
            0
        };
        s = &s[il..];
        let (mut frac, mut scale, mut post) = (0u64, 1f64, false);
        if let Some(r) = s.strip_prefix('.') {
            let fl = r.bytes().take_while(u8::is_ascii_digit).count();
            post = fl > 0;
            for d in r[..fl].bytes() {
                if frac <= (MAX - 1) / 10 {
                    frac = frac * 10 + u64::from(d - b'0');
                    scale *= 10.0;
                }
            }
            s = &r[fl..];
        }
        if il == 0 && !post {
            return Err(invalid());
        }
        let ul = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit: u64 = match &s[..ul] {
            "" => return Err(format!("time: missing unit in duration {orig:?}")),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("time: unknown unit {u:?} in duration {orig:?}")),
        };
        s = &s[ul..];
        v = v
            .checked_mul(unit)
            .filter(|v| *v <= MAX)
            .ok_or_else(invalid)?;
        if frac > 0 {
            v += (frac as f64 * (unit as f64 / scale)) as u64;
        }
        total = total
            .checked_add(v)
            .filter(|t| *t <= MAX)
            .ok_or_else(invalid)?;
    }
    match (neg, i64::try_from(total)) {
        (false, Ok(t)) => Ok(t),
        (true, Ok(t)) => Ok(-t),
        (true, Err(_)) => Ok(i64::MIN),
        (false, Err(_)) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[&str]) -> Vec<String> {
        pairs.iter().map(|s| s.to_string()).collect()
    }

    fn cmd(ins: &Instruction, vars: &[&str]) -> Command {
        ins.command(&env(vars), '\\').unwrap()
    }

    fn err(text: &str) -> ParseError {
        parse(text).unwrap_err()
    }

    #[test]
    fn multi_stage_with_meta_args() {
        let df = parse(
            "ARG BASE=alpine\nARG TAG\nFROM $BASE:${TAG:-3.19} AS Build\nRUN make\n\nfrom scratch\nCOPY --from=build /out /app\n",
        )
        .unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(df.meta_args.len(), 2);
        assert_eq!(
            cmd(&df.meta_args[0], &[]),
            Command::Arg(vec![("BASE".into(), Some("alpine".into()))])
        );
        assert_eq!(
            cmd(&df.meta_args[1], &[]),
            Command::Arg(vec![("TAG".into(), None)])
        );
        assert_eq!(df.stages.len(), 2);
        let from = &df.stages[0].from;
        assert_eq!(
            (from.line, from.original.as_str()),
            (3, "FROM $BASE:${TAG:-3.19} AS Build")
        );
        assert_eq!(
            cmd(from, &["BASE=alpine"]),
            Command::From {
                image: "alpine:3.19".into(),
                name: Some("build".into()),
                platform: None
            }
        );
        assert_eq!(df.stages[0].instructions[0].args, vec!["make"]);
        assert_eq!(df.stages[1].from.line, 6);
        let copy = &df.stages[1].instructions[0];
        assert_eq!(copy.flags, vec![("from".to_string(), "build".to_string())]);
        assert_eq!(
            cmd(copy, &[]),
            Command::Copy {
                sources: vec!["/out".into()],
                dest: "/app".into(),
                from: Some("build".into()),
                chown: None,
                chmod: None
            }
        );
    }

    #[test]
    fn continuations_and_comments() {
        let df = parse(
            "FROM busybox\n# comment\n  RUN echo a \\\n# inside\n\n    && echo b \\  \n  && echo c\nRUN x \\",
        )
        .unwrap();
        let ins = &df.stages[0].instructions;
        assert_eq!(ins[0].line, 3);
        assert_eq!(ins[0].original, "RUN echo a     && echo b   && echo c");
        assert_eq!(ins[0].args, vec!["echo a     && echo b   && echo c"]);
        assert_eq!(ins[1].args, vec!["x"]);
        // `#` mid-line is not a comment.
        let df = parse("FROM a\nRUN echo # hi\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].args, vec!["echo # hi"]);
    }

    #[test]
    fn directives() {
        let df = parse("# syntax=docker/dockerfile:1\n#ESCAPE = `\nFROM windows\nRUN dir `\n  c:\\ \nCOPY a b\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.stages[0].instructions[0].args, vec!["dir   c:\\"]);
        assert_eq!(
            err("# escape=`\n# escape=\\\nFROM a").to_string(),
            "Dockerfile parse error line 2: only one escape parser directive can be used"
        );
        assert_eq!(err("# escape=x\nFROM a").line, 1);
        // Not at the top: just a comment.
        let df = parse("FROM a\n# escape=`\nRUN a \\\n b").unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(df.stages[0].instructions[0].args, vec!["a  b"]);
        let df = parse("# hello\n# escape=`\nFROM a").unwrap();
        assert_eq!(df.escape, '\\');
    }

    #[test]
    fn json_and_shell_forms() {
        let df = parse(
            "FROM a\nRUN [\"echo\", \"hi there\"]\nCMD echo $HOME\nENTRYPOINT [ \"/bin/app\" ] \nRUN [not json\nCMD []\nSHELL [\"/bin/bash\", \"-c\"]\n",
        )
        .unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            cmd(&i[0], &[]),
            Command::Run(CommandLine::Exec(vec!["echo".into(), "hi there".into()]))
        );
        assert_eq!(
            cmd(&i[1], &["HOME=/x"]),
            Command::Cmd(CommandLine::Shell("echo $HOME".into()))
        );
        assert_eq!(
            cmd(&i[2], &[]),
            Command::Entrypoint(CommandLine::Exec(vec!["/bin/app".into()]))
        );
        assert_eq!(
            cmd(&i[3], &[]),
            Command::Run(CommandLine::Shell("[not json".into()))
        );
        assert_eq!(cmd(&i[4], &[]), Command::Cmd(CommandLine::Exec(vec![])));
        assert_eq!(
            cmd(&i[5], &[]),
            Command::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert!(err("FROM a\nRUN [\"a\", 1]")
            .message
            .contains("must be comprised of strings only"));
        assert_eq!(
            err("FROM a\nSHELL /bin/sh -c").message,
            "SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err("FROM a\nRUN").message,
            "RUN requires at least one argument"
        );
    }

    #[test]
    fn env_and_label() {
        let df = parse(
            "FROM a\nENV A=1 B=\"two words\" C=${A}x\nENV OLD  some value  here\nLABEL \"com.example.k\"=\"v 1\" b='$A'\nENV\tD=\\$A\n",
        )
        .unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            i[0].args,
            vec!["A", "1", "B", "\"two words\"", "C", "${A}x"]
        );
        assert_eq!(
            cmd(&i[0], &["A=one"]),
            Command::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "onex".into())
            ])
        );
        assert_eq!(
            cmd(&i[1], &[]),
            Command::Env(vec![("OLD".into(), "some value  here".into())])
        );
        assert_eq!(
            cmd(&i[2], &["A=x"]),
            Command::Label(vec![
                ("com.example.k".into(), "v 1".into()),
                ("b".into(), "$A".into())
            ])
        );
        assert_eq!(
            cmd(&i[3], &["A=x"]),
            Command::Env(vec![("D".into(), "$A".into())])
        );
        assert_eq!(
            err("FROM a\nENV FOO").message,
            "ENV must have two arguments"
        );
        assert!(err("FROM a\nLABEL a=b c")
            .message
            .starts_with("Syntax error - can't find = in \"c\""));
        assert_eq!(err("FROM a\nENV =x").message, "ENV names can not be blank");
        assert_eq!(err("FROM a\nARG =x").message, "ARG names can not be blank");
    }

    #[test]
    fn copy_add_flags() {
        let df = parse(
            "FROM a\nCOPY --chown=${U}:1 --chmod=755 [\"a b\", \"/d/\"]\nADD --chown=\"1:1\" src1 src2 /dst/\nCOPY -- --weird /x\n",
        )
        .unwrap();
        let i = &df.stages[0].instructions;
        assert!(i[0].json);
        assert_eq!(
            cmd(&i[0], &["U=app"]),
            Command::Copy {
                sources: vec!["a b".into()],
                dest: "/d/".into(),
                from: None,
                chown: Some("app:1".into()),
                chmod: Some("755".into())
            }
        );
        assert_eq!(
            cmd(&i[1], &[]),
            Command::Add {
                sources: vec!["src1".into(), "src2".into()],
                dest: "/dst/".into(),
                chown: Some("1:1".into()),
                chmod: None
            }
        );
        assert_eq!(i[2].args, vec!["--weird", "/x"]);
        assert_eq!(
            err("FROM a\nADD --from=x a b").to_string(),
            "Dockerfile parse error line 2: Unknown flag: from"
        );
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache,target=/x true").message,
            "Unknown flag: mount"
        );
        assert_eq!(
            err("FROM a\nCOPY --chown a b").message,
            "Missing a value on flag: chown"
        );
        assert_eq!(
            err("FROM a\nCOPY --chown=1 --chown=2 a b").message,
            "Duplicate flag specified: chown"
        );
        assert!(err("FROM a\n\nCOPY onlyone").to_string().starts_with(
            "Dockerfile parse error line 3: COPY requires at least two arguments, but only one was provided."
        ));
        let df = parse("FROM --platform=$BUILDPLATFORM golang AS b").unwrap();
        assert_eq!(
            cmd(&df.stages[0].from, &["BUILDPLATFORM=linux/amd64"]),
            Command::From {
                image: "golang".into(),
                name: Some("b".into()),
                platform: Some("linux/amd64".into())
            }
        );
        let bad = Instruction {
            flags: vec![("foo".into(), "1".into())],
            ..df.stages[0].from.clone()
        };
        assert_eq!(
            bad.command(&env(&[]).as_slice(), '\\').unwrap_err(),
            "Unknown flag: foo"
        );
    }

    #[test]
    fn healthcheck() {
        let df = parse(
            "FROM a\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s --retries=3 CMD curl -f http://x/ || exit 1\nHEALTHCHECK cmd [\"/bin/check\", \"-q\"]\nHEALTHCHECK NONE\n",
        )
        .unwrap();
        let i = &df.stages[0].instructions;
        assert_eq!(
            cmd(&i[0], &[]),
            Command::Healthcheck(Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "curl -f http://x/ || exit 1".into()],
                interval_ns: 90_000_000_000,
                timeout_ns: 500_000_000,
                start_period_ns: 2_000_000_000,
                retries: 3,
            }))
        );
        let Command::Healthcheck(Some(h)) = cmd(&i[1], &[]) else {
            panic!()
        };
        assert_eq!(h.test, vec!["CMD", "/bin/check", "-q"]);
        assert_eq!((h.interval_ns, h.retries), (0, 0));
        assert_eq!(cmd(&i[2], &[]), Command::Healthcheck(None));
        assert_eq!(
            err("FROM a\nHEALTHCHECK NONE x").message,
            "HEALTHCHECK NONE takes no arguments"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK CMD").message,
            "Missing command after HEALTHCHECK CMD"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK RUN x").message,
            "Unknown type \"RUN\" in HEALTHCHECK (try CMD)"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --interval=5 CMD x").message,
            "time: missing unit in duration \"5\""
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --timeout=0s CMD x").message,
            "Interval \"timeout\" cannot be less than 1ms"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --retries=0 CMD x").message,
            "--retries must be at least 1 (not 0)"
        );
        assert_eq!(
            err("FROM a\nHEALTHCHECK --retries=x CMD x").message,
            "strconv.ParseInt: parsing \"x\": invalid syntax"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h2m3.5s"), Ok(3_723_500_000_000));
        assert_eq!(parse_go_duration("1.5us"), Ok(1_500));
        assert_eq!(parse_go_duration("-2ms"), Ok(-2_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration(".s"),
            Err("time: invalid duration \".s\"".into())
        );
        assert_eq!(
            parse_go_duration("3d"),
            Err("time: unknown unit \"d\" in duration \"3d\"".into())
        );
        assert!(parse_go_duration("99999999999h").is_err());
    }

    #[test]
    fn onbuild_and_misc() {
        let df = parse(
            "FROM a\nONBUILD RUN echo hi\nonbuild   ADD . /app\nWORKDIR /src/$D\nUSER ${U:-nobody}\nEXPOSE 80 $P 53/udp\nVOLUME /data \"$V\"\nVOLUME [\"/j\"]\nSTOPSIGNAL SIGTERM\nMAINTAINER me <m@x>\n",
        )
        .unwrap();
        let i = &df.stages[0].instructions;
        let v = &["D=x", "P=8000-8002 9000", "V=/v"];
        assert_eq!(i[0].args, vec!["run", "echo hi"]);
        assert_eq!(cmd(&i[0], v), Command::Onbuild("RUN echo hi".into()));
        assert_eq!(cmd(&i[1], v), Command::Onbuild("ADD . /app".into()));
        assert_eq!(cmd(&i[2], v), Command::Workdir("/src/x".into()));
        assert_eq!(cmd(&i[3], v), Command::User("nobody".into()));
        assert_eq!(
            cmd(&i[4], v),
            Command::Expose(vec![
                "80".into(),
                "8000-8002".into(),
                "9000".into(),
                "53/udp".into()
            ])
        );
        assert_eq!(
            cmd(&i[5], v),
            Command::Volume(vec!["/data".into(), "/v".into()])
        );
        assert_eq!(cmd(&i[6], v), Command::Volume(vec!["/j".into()]));
        assert_eq!(cmd(&i[7], v), Command::StopSignal("SIGTERM".into()));
        assert_eq!(cmd(&i[8], v), Command::Maintainer("me <m@x>".into()));
        assert_eq!(
            err("FROM a\nONBUILD ONBUILD RUN x").message,
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        );
        assert_eq!(
            err("FROM a\nONBUILD from b").message,
            "FROM isn't allowed as an ONBUILD trigger"
        );
        assert_eq!(
            err("FROM a\nWORKDIR").message,
            "WORKDIR requires exactly one argument"
        );
        assert_eq!(
            err("FROM a\nEXPOSE").message,
            "EXPOSE requires at least one argument"
        );
    }

    #[test]
    fn bad_files() {
        assert_eq!(
            err("FROM a\n\nFOO bar\n").to_string(),
            "Dockerfile parse error line 3: unknown instruction: FOO"
        );
        assert_eq!(
            err("ARG X\nRUN echo\nFROM a").to_string(),
            "Dockerfile parse error line 2: no build stage in current context"
        );
        assert_eq!(
            err("").message,
            "the Dockerfile (Dockerfile) cannot be empty"
        );
        assert_eq!(
            err("# just a comment\n\n").message,
            "file with no instructions"
        );
        assert_eq!(
            err("ARG X=1\n").message,
            "No image was generated. Is your Dockerfile empty?"
        );
        assert_eq!(
            err("FROM a b").message,
            "FROM requires either one or three arguments"
        );
        assert_eq!(err("FROM a\nFROM b AS c d").line, 2);
        assert_eq!(
            err("FROM a AS 1st").message,
            "invalid name for build stage: \"1st\", name can't start with a number or contain symbols"
        );
        // Syntax errors anywhere come before typed errors, as in moby.
        assert_eq!(err("FOO\nFROM a\nENV X").line, 3);
        let df = parse("\u{feff}FROM a\r\nRUN x\r\n").unwrap();
        assert_eq!(df.stages[0].instructions[0].args, vec!["x"]);
    }

    #[test]
    fn expansion() {
        let v = env(&["A=a", "E=", "SP=x  y", "A=last"]);
        let x = |w: &str| expand_word(w, &v, '\\');
        assert_eq!(x("$A ${A} ${NOPE}|"), Ok("last last |".into()));
        assert_eq!(
            x("${NOPE:-def} ${E:-def} ${E-def} ${NOPE-def}"),
            Ok("def def  def".into())
        );
        assert_eq!(
            x("${A:+alt} ${E:+alt} ${E+alt} ${NOPE+alt}|"),
            Ok("alt  alt |".into())
        );
        assert_eq!(x("${NOPE:-${A}-${E:-z}}"), Ok("last-z".into()));
        assert_eq!(
            x("'$A \"x\"' \"$A 'y' \\\" \\$A \\n\""),
            Ok("$A \"x\" last 'y' \" $A \\n".into())
        );
        assert_eq!(
            x("\\$A \\\\ a\\ b $ $1 trailing\\"),
            Ok("$A \\ a b $  trailing".into())
        );
        assert_eq!(x("${E?}"), Ok("".into()));
        assert_eq!(
            x("${NOPE:?must set}"),
            Err("failed to process \"${NOPE:?must set}\": NOPE: must set".into())
        );
        assert!(x("${E:?}")
            .unwrap_err()
            .ends_with("E: is not allowed to be empty"));
        assert!(x("${NOPE?}")
            .unwrap_err()
            .ends_with("NOPE: is not allowed to be unset"));
        assert!(x("${A").unwrap_err().ends_with("syntax error: missing '}'"));
        assert!(x("${}")
            .unwrap_err()
            .ends_with("syntax error: bad substitution"));
        assert!(x("${A:=x}")
            .unwrap_err()
            .ends_with("unsupported modifier (:=) in substitution"));
        assert!(x("'open").unwrap_err().ends_with("matching single-quote"));
        assert!(x("\"open").unwrap_err().ends_with("matching double-quote"));
        let f = env(&["F=dir/sub/file.tar.gz"]);
        let y = |w: &str| expand_word(w, &f, '\\').unwrap();
        assert_eq!(
            y("${F#*/} ${F##*/} ${F%.*} ${F%%.*} ${F#x}"),
            "sub/file.tar.gz file.tar.gz dir/sub/file.tar dir/sub/file dir/sub/file.tar.gz"
        );
        // Backtick escape: backslash is literal.
        assert_eq!(expand_word("C:\\dir `$A", &v, '`'), Ok("C:\\dir $A".into()));
    }

    #[test]
    fn word_splitting_and_vars() {
        let v = env(&["SP=x  y", "E="]);
        let ws = |t: &str| expand_words(t, &v, '\\').unwrap();
        assert_eq!(
            ws("a $SP \"b c\" d\\ e '' $E"),
            vec!["a", "x", "y", "b c", "d e"]
        );
        assert_eq!(ws("  "), Vec::<String>::new());
        let mut m = HashMap::new();
        m.insert("K".to_string(), "map".to_string());
        assert_eq!(expand_word("$K", &m, '\\'), Ok("map".into()));
        let f = |n: &str| (n == "K").then(|| "closure".to_string());
        assert_eq!(
            expand_word("${K}-${Z:-z}", &f, '\\'),
            Ok("closure-z".into())
        );
        assert_eq!(
            Vars::get(env(&["BARE"]).as_slice(), "BARE"),
            Some(String::new())
        );
    }

    #[test]
    fn parse_words_and_flags_helpers() {
        assert_eq!(
            parse_words(r#"a="b c" d='e\ f' g\ h "" i"#, '\\'),
            vec![r#"a="b c""#, r"d='e\ f'", r"g\ h", r#""""#, "i"]
        );
        assert_eq!(
            extract_builder_flags(r#"--a=1 --b="x y" --c rest of --line"#),
            (
                "rest of --line".to_string(),
                vec![
                    "--a=1".to_string(),
                    "--b=x y".to_string(),
                    "--c".to_string()
                ]
            )
        );
        assert_eq!(
            extract_builder_flags("--a=1"),
            (String::new(), vec!["--a=1".to_string()])
        );
    }
}
