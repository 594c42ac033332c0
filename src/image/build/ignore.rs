//! `.dockerignore` matching as Docker does it: `dockerignore.ReadAll` to read
//! the file and moby/patternmatcher (`MatchesOrParentMatches`) to match, so the
//! build context wharf assembles contains exactly the files Docker's would.

/// Compiled `.dockerignore` patterns, evaluated in order; the last pattern
/// that matches a path (or one of its parent dirs) decides.
#[derive(Debug, Clone)]
pub struct IgnoreMatcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// Cleaned pattern without the `!`.
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

/// patternmatcher's match types: plain strings are compared without a regexp.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Exact,
    /// `foo/**`: a string prefix.
    Prefix,
    /// `**/foo`: a string suffix (or the whole path `foo`).
    Suffix,
    /// Anything else, as the regexp patternmatcher would build.
    Regex(Vec<Tok>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    /// `*`: `[^/]*`
    Star,
    /// `?`: `[^/]`
    One,
    /// `[...]`: like the regexp class, so a negated class also matches `/`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**/` in the middle: `(.*/)?`
    DirStar,
    /// `**` at the end after other wildcards: `.*`
    Rest,
}

impl IgnoreMatcher {
    /// Reads .dockerignore text: one pattern per line, `#` comments (only in
    /// column 0, as ReadAll), blank lines skipped, trimmed, `!` exceptions,
    /// each pattern `filepath.Clean`ed and a leading `/` removed.
    pub fn parse(text: &str) -> Result<IgnoreMatcher, String> {
        let mut patterns = Vec::new();
        for p in read_all(text) {
            // patternmatcher.New
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err("illegal exclusion pattern: \"!\"".into());
                }
                p.remove(0);
            }
            let Some(kind) = compile(&p) else {
                return Err(format!(
                    "invalid .dockerignore pattern {p:?}: syntax error in pattern"
                ));
            };
            patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(IgnoreMatcher { patterns })
    }

    /// True when the context-relative path is excluded from the build context.
    /// A leading `/` or `./` is ignored; the context root itself never is.
    pub fn excluded(&self, path: &str) -> bool {
        let cleaned = clean(path);
        let file = cleaned.trim_start_matches('/');
        if file.is_empty() || file == "." {
            return false;
        }
        let parent_dirs: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for p in &self.patterns {
            // An exception can only flip an excluded path and vice versa.
            if p.exclusion != matched {
                continue;
            }
            let hit = p.matches(file)
                || (1..=parent_dirs.len()).any(|i| p.matches(&parent_dirs[..i].join("/")));
            if hit {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// True when any `!pattern` exists (patternmatcher's `Exclusions()`): only
    /// then can an excluded directory hold re-included files.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether a walker must still descend into the excluded directory `dir`
    /// because an exception pattern names something under it. This is the
    /// textual prefix check of Docker's context tarring (pkg/archive), so an
    /// exception like `!**/keep` does not reach into an excluded dir, as in Docker.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let cleaned = clean(dir);
        let dir_slash = format!("{}/", cleaned.trim_start_matches('/'));
        self.patterns
            .iter()
            .any(|p| p.exclusion && format!("{}/", p.cleaned).starts_with(&dir_slash))
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        let p = &self.cleaned;
        match &self.kind {
            Kind::Exact => path == p,
            Kind::Prefix => path.starts_with(&p[..p.len() - 2]),
            Kind::Suffix => {
                let suffix = &p[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/') == Some(path)
            }
            Kind::Regex(toks) => regex_match(toks, &path.chars().collect::<Vec<_>>()),
        }
    }
}

/// dockerignore.ReadAll: the pattern strings, `!` kept.
fn read_all(text: &str) -> Vec<String> {
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let line = if i == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut pat = line.trim();
        if pat.is_empty() {
            continue;
        }
        let invert = pat.starts_with('!');
        if invert {
            pat = pat[1..].trim();
        }
        let mut p = String::new();
        if !pat.is_empty() {
            p = clean(pat);
            if p.len() > 1 && p.starts_with('/') {
                p.remove(0);
            }
        }
        out.push(if invert { format!("!{p}") } else { p });
    }
    out
}

/// Go's `filepath.Clean` for '/'-separated paths.
fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => match out.last() {
                Some(&last) if last != ".." => {
                    out.pop();
                }
                _ if rooted => {}
                _ => out.push(".."),
            },
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// patternmatcher's `compile`, with `filepath.Match`'s syntax check (None =
/// ErrBadPattern): unterminated or empty classes, unescaped `-`/`]` in a
/// class, and a trailing `\` are errors.
fn compile(pattern: &str) -> Option<Kind> {
    let c: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut kind = Kind::Exact;
    let mut i = 0;
    while i < c.len() {
        let first = i == 0;
        let ch = c[i];
        i += 1;
        match ch {
            '*' if c.get(i) == Some(&'*') => {
                i += 1;
                if c.get(i) == Some(&'/') {
                    i += 1;
                }
                if i < c.len() {
                    toks.push(Tok::DirStar);
                    kind = Kind::Regex(vec![]);
                } else if kind == Kind::Exact {
                    kind = Kind::Prefix;
                } else {
                    toks.push(Tok::Rest);
                    kind = Kind::Regex(vec![]);
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' | '?' | '\\' | '[' | ']' => {
                toks.push(match ch {
                    '*' => Tok::Star,
                    '?' => Tok::One,
                    '\\' => {
                        i += 1;
                        Tok::Lit(*c.get(i - 1)?)
                    }
                    '[' => class(&c, &mut i)?,
                    _ => Tok::Lit(ch),
                });
                kind = Kind::Regex(vec![]);
            }
            _ => toks.push(Tok::Lit(ch)),
        }
    }
    Some(match kind {
        Kind::Regex(_) => Kind::Regex(toks),
        k => k,
    })
}

/// Parses a class body after `[` (filepath.Match syntax).
fn class(c: &[char], i: &mut usize) -> Option<Tok> {
    let negated = c.get(*i) == Some(&'^');
    if negated {
        *i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if c.get(*i) == Some(&']') && !ranges.is_empty() {
            *i += 1;
            return Some(Tok::Class { negated, ranges });
        }
        let lo = class_char(c, i)?;
        let mut hi = lo;
        if c.get(*i) == Some(&'-') {
            *i += 1;
            hi = class_char(c, i)?;
        }
        ranges.push((lo, hi));
    }
}

/// filepath.Match's getEsc: a class char must be followed by more pattern.
fn class_char(c: &[char], i: &mut usize) -> Option<char> {
    let mut ch = *c.get(*i).filter(|ch| !matches!(ch, '-' | ']'))?;
    if ch == '\\' {
        *i += 1;
        ch = *c.get(*i)?;
    }
    *i += 1;
    (*i < c.len()).then_some(ch)
}

/// Anchored match of the token sequence, right to left over the path
/// (`.*` does not cross a newline, as in Go's regexp).
fn regex_match(toks: &[Tok], s: &[char]) -> bool {
    let n = s.len();
    let mut next = vec![false; n + 1];
    next[n] = true;
    for tok in toks.iter().rev() {
        let mut cur = vec![false; n + 1];
        let mut slash_ahead = false;
        for j in (0..=n).rev() {
            let c = s.get(j).copied();
            cur[j] = match tok {
                Tok::Lit(l) => c == Some(*l) && next[j + 1],
                Tok::One => c.is_some_and(|c| c != '/') && next[j + 1],
                Tok::Class { negated, ranges } => {
                    c.is_some_and(|c| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated)
                        && next[j + 1]
                }
                Tok::Star => next[j] || (c.is_some_and(|c| c != '/') && cur[j + 1]),
                Tok::Rest => next[j] || (c.is_some_and(|c| c != '\n') && cur[j + 1]),
                Tok::DirStar => {
                    if c == Some('/') && next[j + 1] {
                        slash_ahead = true;
                    } else if c == Some('\n') {
                        slash_ahead = false;
                    }
                    next[j] || slash_ahead
                }
            };
        }
        next = cur;
    }
    next[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> IgnoreMatcher {
        IgnoreMatcher::parse(text).unwrap()
    }

    fn check(text: &str, yes: &[&str], no: &[&str]) {
        let im = m(text);
        for p in yes {
            assert!(im.excluded(p), "{text:?} should exclude {p:?}");
        }
        for p in no {
            assert!(!im.excluded(p), "{text:?} should not exclude {p:?}");
        }
    }

    #[test]
    fn globs() {
        check(
            "*.md",
            &["README.md", "a.md"],
            &["docs/a.md", "a.mdx", "md"],
        );
        check(
            "**/*.go",
            &["a.go", "x/y/z.go", "x/b.go/inner"],
            &["a.gox", "go"],
        );
        check(
            "temp?",
            &["temp1", "tempa", "temp1/file"],
            &["temp", "temp12", "x/temp1"],
        );
        check(
            "*/temp*",
            &["somedir/temporary.txt", "somedir/temp/x"],
            &["temp", "a/b/temp"],
        );
        check(
            "[a-c]*.txt\na[^x]b",
            &["b1.txt", "acb", "a/b"],
            &["d.txt", "axb"],
        );
        check("\\*.txt\nfoo\\?", &["*.txt", "foo?"], &["a.txt", "foox"]);
        check("a{b}+.c$", &["a{b}+.c$"], &["ab.c"]);
    }

    #[test]
    fn double_star() {
        check("foo/**", &["foo/bar", "foo/a/b"], &["foo", "foobar"]);
        check(
            "**/foo",
            &["foo", "a/foo", "a/b/foo/c"],
            &["afoo/x", "foo2"],
        );
        check("**", &["a", "a/b"], &[]);
        check("a/**/b", &["a/b", "a/x/b", "a/x/y/b/z"], &["ab", "a/xb"]);
        check("**/a/**", &["a/x", "q/a/x"], &["ba/x"]);
    }

    #[test]
    fn dirs_and_exceptions() {
        check(
            "node_modules",
            &["node_modules", "node_modules/a/b.js"],
            &["src/node_modules"],
        );
        let text = "# comment\n\n*.md\n!README.md\ndocs\n!docs/keep.md\n";
        check(
            text,
            &["a.md", "docs", "docs/other.txt"],
            &["README.md", "docs/keep.md", "src/x.go"],
        );
        let im = m(text);
        assert!(im.has_exceptions());
        assert!(im.may_reinclude_under("docs"));
        assert!(im.may_reinclude_under("./docs/"));
        assert!(!im.may_reinclude_under("src"));
        assert!(!m("*.md").has_exceptions());
        // The last matching pattern wins.
        check("!a\na", &["a"], &[]);
        check("a\n!a\na/b", &["a/b", "a/b/c"], &["a", "a/c"]);
        check(
            "*\n!Dockerfile\n!src",
            &["x", "lib/y"],
            &["Dockerfile", "src", "src/main.rs"],
        );
    }

    #[test]
    fn cleaning_and_reading() {
        check(
            "/build\n./tmp/\n  spaced  \nx/../y",
            &["build/x", "tmp/a", "spaced", "y"],
            &["x"],
        );
        check("\u{feff}a\r\n !b \r\n", &["a"], &["b"]);
        // A `#` not in column 0 is a pattern.
        check(" #x\n# y", &["#x"], &["# y"]);
        let im = m("a\n!/a/b");
        assert!(!im.excluded("./a/b") && !im.excluded("/a/b/") && im.excluded("a//c"));
        assert!(!m("*").excluded(".") && !m("*").excluded(""));
        assert!(m("../x").excluded("../x"));
        assert_eq!(clean("a/./b/../../.."), "..");
        assert_eq!(clean("/../a//"), "/a");
    }

    #[test]
    fn bad_patterns() {
        for bad in ["[a", "[]a]", "a[", "[a-]", "x\\", "[\\"] {
            let e = IgnoreMatcher::parse(&format!("ok\n{bad}")).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(
            IgnoreMatcher::parse("!").unwrap_err(),
            "illegal exclusion pattern: \"!\""
        );
        assert!(IgnoreMatcher::parse("[\\]]\n[a-c-]x\n").is_err());
        check("[\\]]", &["]"], &["a"]);
    }
}
