//! Docker's shell-word lexer (moby/buildkit's `shell` package), used by the Dockerfile
//! parser and at build time: quotes, escapes (with the Dockerfile's escape character)
//! and variable expansion (`$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:+word}`,
//! `${VAR?msg}`, `${VAR#pattern}`, `${VAR%pattern}` and their `:`/doubled forms), the
//! words split on unquoted whitespace where an instruction takes several.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Variables visible to expansion; `None` when unset (unset and empty differ
/// for `${VAR-word}` and `${VAR?msg}`).
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

/// `KEY=value` entries as in a container's Env; the last entry wins and an
/// entry without `=` counts as set to "" (moby's `BuildEnvs`).
impl Vars for [String] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter().rev().find_map(|e| match e.split_once('=') {
            Some((k, v)) if k == name => Some(v.to_string()),
            None if e == name => Some(String::new()),
            _ => None,
        })
    }
}

/// Lets a borrowed slice be passed as `&dyn Vars` (`&env.as_slice()`).
impl Vars for &[String] {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(*self, name)
    }
}

impl Vars for Vec<String> {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(self.as_slice(), name)
    }
}

impl<S: BuildHasher> Vars for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

// ---------------------------------------------------------------- lexer

/// moby's `ProcessWord`: expands variables and removes quotes and escapes.
pub fn expand_word(word: &str, vars: &dyn Vars, escape: char) -> Result<String, String> {
    process(word, vars, escape).map(|(w, _)| w)
}

/// moby's `ProcessWords`: like [`expand_word`], then splits on whitespace that
/// was neither quoted nor escaped (whitespace from variable values splits).
pub fn expand_words(text: &str, vars: &dyn Vars, escape: char) -> Result<Vec<String>, String> {
    process(text, vars, escape).map(|(_, w)| w)
}

fn process(word: &str, vars: &dyn Vars, escape: char) -> Result<(String, Vec<String>), String> {
    let mut lx = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        vars,
        escape,
        raw_escapes: false,
    };
    lx.process_stop_on(None, false)
        .map_err(|e| format!("failed to process {word:?}: {e}"))
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    escape: char,
    /// Keep escape characters (for `${V#pattern}` where the pattern needs them).
    raw_escapes: bool,
}

#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if !ch.is_whitespace() {
            self.word.push(ch);
        } else if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw);
        let r = self.stop_on(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            match ch {
                '\'' | '"' | '$' => {
                    let tmp = match ch {
                        '\'' => self.single_quote()?,
                        '"' => self.double_quote()?,
                        _ => self.dollar()?,
                    };
                    result.push_str(&tmp);
                    if ch == '$' {
                        tmp.chars().for_each(|c| words.add_char(c));
                    } else {
                        words.word.push_str(&tmp);
                    }
                }
                _ => {
                    self.pos += 1;
                    if ch != self.escape {
                        words.add_char(ch);
                        result.push(ch);
                        continue;
                    }
                    if self.raw_escapes {
                        words.word.push(ch);
                        result.push(ch);
                    }
                    // An escape at the very end is dropped.
                    let Some(c) = self.next() else { break };
                    words.word.push(c);
                    result.push(c);
                }
            }
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut result = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(result),
                Some(c) => result.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut result = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(result);
                }
                Some('$') => result.push_str(&self.dollar()?),
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            // Only these can be escaped inside "", like sh.
                            Some(c) if c == '"' || c == '$' || c == self.escape => {
                                self.pos += 1;
                                ch = c;
                            }
                            _ => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.vars.get(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            _ => {}
        }
        let name = self.name();
        let mut ch = self.next();
        if ch == Some('}') {
            return Ok(self.vars.get(&name).unwrap_or_default());
        }
        let null_is_unset = ch == Some(':');
        let mut modifier = String::new();
        if null_is_unset {
            modifier.push(':');
            ch = self.next();
        }
        let Some(c) = ch else {
            return Err(MISSING_BRACE.into());
        };
        modifier.push(c);
        let unsupported = || format!("unsupported modifier ({modifier}) in substitution");
        if !null_is_unset && !matches!(c, '+' | '-' | '?' | '#' | '%') {
            return Err(unsupported());
        }
        let word = match self.process_stop_on(Some('}'), c == '#' || c == '%') {
            Ok((w, _)) => w,
            Err(_) if self.peek().is_none() => return Err(MISSING_BRACE.into()),
            Err(e) => return Err(e),
        };
        let value = self.vars.get(&name);
        let unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match c {
            '-' if unset => Ok(word),
            '-' => Ok(value.unwrap_or_default()),
            '+' if unset => Ok(String::new()),
            '+' => Ok(word),
            '?' if unset => {
                let msg = match (&value, word.is_empty()) {
                    (_, false) => word,
                    (None, true) => "is not allowed to be unset".into(),
                    (Some(_), true) => "is not allowed to be empty".into(),
                };
                Err(format!("{name}: {msg}"))
            }
            '?' => Ok(value.unwrap_or_default()),
            '#' | '%' => {
                let (greedy, pat) = match word.strip_prefix(c) {
                    Some(p) => (true, p),
                    None => (false, word.as_str()),
                };
                trim_affix(&value.unwrap_or_default(), pat, greedy, c == '%')
            }
            _ => Err(unsupported()),
        }
    }

    /// A variable name, a run of digits (positional), or one special parameter.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && "@*#?-$!".contains(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Glob {
    Lit(char),
    Star,
    One,
}

/// Shell pattern for `${V#pat}`/`${V%pat}` (buildkit's convertShellPatternToRegex).
fn shell_glob(pat: &str) -> Result<Vec<Glob>, String> {
    let chars: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => out.push(Glob::Star),
            '?' => out.push(Glob::One),
            '\\' if matches!(chars.get(i), Some('}' | '/')) => {}
            '\\' => match chars.get(i) {
                Some(&e @ ('*' | '?' | '\\')) => {
                    out.push(Glob::Lit(e));
                    i += 1;
                }
                other => {
                    let e = other.map(|c| c.to_string()).unwrap_or_default();
                    return Err(format!(
                        "invalid pattern ({pat}) in substitution: invalid escape '\\{e}'"
                    ));
                }
            },
            _ => out.push(Glob::Lit(c)),
        }
    }
    Ok(out)
}

fn glob_match(p: &[Glob], s: &[char]) -> bool {
    // Right-to-left table so `*` runs stay linear (no backtracking blowup).
    let n = s.len();
    let mut next = vec![false; n + 1];
    next[n] = true;
    for g in p.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match g {
                Glob::Star => next[j] || (j < n && cur[j + 1]),
                Glob::One => j < n && next[j + 1],
                Glob::Lit(c) => j < n && s[j] == *c && next[j + 1],
            };
        }
        next = cur;
    }
    next[0]
}

/// Removes the shortest (or longest when `greedy`) matching prefix or suffix.
fn trim_affix(value: &str, pat: &str, greedy: bool, suffix: bool) -> Result<String, String> {
    let p = shell_glob(pat)?;
    let v: Vec<char> = value.chars().collect();
    let n = v.len();
    let cuts: Box<dyn Iterator<Item = usize>> = if greedy != suffix {
        Box::new((0..=n).rev())
    } else {
        Box::new(0..=n)
    };
    for k in cuts {
        let (part, keep) = if suffix {
            (&v[k..], &v[..k])
        } else {
            (&v[..k], &v[k..])
        };
        if glob_match(&p, part) {
            return Ok(keep.iter().collect());
        }
    }
    Ok(value.to_string())
}
