//! Dockerfile instructions applied to an image's container config: what `docker import
//! --change` (and later `docker commit --change`) takes, as dockerd's `BuildFromConfig`
//! applies them. The instructions allowed are dockerd's: CMD, ENTRYPOINT, ENV, EXPOSE,
//! LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME and WORKDIR; words are read as the
//! Dockerfile's shell lexer reads them (quotes, backslash escapes, `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR:+alternative}` from the config's environment so far), except
//! in CMD and ENTRYPOINT, which are taken as written.

use serde_json::{json, Map, Value};

/// dockerd's `container.Config{}` as Go marshals it, as a JSON object (keys sorted).
pub fn empty_config() -> Value {
    json!({
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "Tty": false,
        "OpenStdin": false,
        "StdinOnce": false,
        "Env": null,
        "Cmd": null,
        "Image": "",
        "Volumes": null,
        "WorkingDir": "",
        "Entrypoint": null,
        "OnBuild": null,
        "Labels": null,
    })
}

const VALID: &[&str] = &[
    "cmd",
    "entrypoint",
    "env",
    "expose",
    "label",
    "onbuild",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Applies `changes` (each one or more Dockerfile lines) to `config`, a container
/// config object. Every instruction is checked before any is applied; the error is
/// dockerd's message.
pub fn apply(config: &mut Value, changes: &[String]) -> Result<(), String> {
    let text = changes.join("\n");
    let mut instructions = Vec::new();
    for line in logical_lines(&text) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (line, ""),
        };
        let word = word.to_ascii_lowercase();
        if !VALID.contains(&word.as_str()) {
            return Err(format!("{word} is not a valid change command"));
        }
        instructions.push((word, rest.to_string()));
    }
    if !config.is_object() {
        *config = empty_config();
    }
    let mut cmd_set = false;
    for (word, rest) in instructions {
        apply_one(config, &word, &rest, &mut cmd_set)?;
    }
    Ok(())
}

/// Lines joined where one ends with a backslash (a continuation).
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.trim_end().strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn apply_one(config: &mut Value, word: &str, rest: &str, cmd_set: &mut bool) -> Result<(), String> {
    let upper = word.to_ascii_uppercase();
    let need_args = || format!("{upper} requires at least one argument");
    let env = env_of(config);
    let object = config
        .as_object_mut()
        .ok_or("the config is not an object")?;
    match word {
        "cmd" | "entrypoint" => {
            if rest.is_empty() {
                return Err(need_args());
            }
            let args = match exec_form(rest) {
                Some(args) => args,
                None => vec!["/bin/sh".to_string(), "-c".to_string(), rest.to_string()],
            };
            if word == "cmd" {
                object.insert("Cmd".into(), json!(args));
                *cmd_set = true;
            } else {
                object.insert("Entrypoint".into(), json!(args));
                if !*cmd_set {
                    object.insert("Cmd".into(), Value::Null);
                }
            }
        }
        "env" | "label" => {
            let pairs = name_values(rest, &upper, &env)?;
            if word == "env" {
                let mut list: Vec<String> = object
                    .get("Env")
                    .and_then(Value::as_array)
                    .map(|l| {
                        l.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                for (key, value) in pairs {
                    let entry = format!("{key}={value}");
                    match list
                        .iter_mut()
                        .find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
                    {
                        Some(existing) => *existing = entry,
                        None => list.push(entry),
                    }
                }
                object.insert("Env".into(), json!(list));
            } else {
                let labels = map_field(object, "Labels");
                for (key, value) in pairs {
                    labels.insert(key, json!(value));
                }
            }
        }
        "user" => {
            if rest.is_empty() {
                return Err(need_args());
            }
            object.insert("User".into(), json!(process_word(rest, &env)?));
        }
        "workdir" => {
            if rest.is_empty() {
                return Err(need_args());
            }
            let requested = process_word(rest, &env)?;
            let current = object
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            object.insert("WorkingDir".into(), json!(workdir(&current, &requested)));
        }
        "stopsignal" => {
            let signal = process_word(rest, &env)?;
            if signal.is_empty() || signal.contains(char::is_whitespace) {
                return Err(format!("Invalid signal: {signal}"));
            }
            object.insert("StopSignal".into(), json!(signal));
        }
        "expose" => {
            let ports = words(rest)?
                .iter()
                .map(|w| process_word(w, &env))
                .collect::<Result<Vec<_>, _>>()?;
            if ports.is_empty() {
                return Err(need_args());
            }
            let exposed = map_field(object, "ExposedPorts");
            for spec in ports {
                for port in port_specs(&spec)? {
                    exposed.insert(port, json!({}));
                }
            }
        }
        "volume" => {
            let paths = match exec_form(rest) {
                Some(paths) => paths,
                None => words(rest)?
                    .iter()
                    .map(|w| process_word(w, &env))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            if paths.is_empty() {
                return Err(need_args());
            }
            let volumes = map_field(object, "Volumes");
            for path in paths {
                let path = path.trim().to_string();
                if path.is_empty() {
                    return Err("VOLUME specified can not be an empty string".to_string());
                }
                volumes.insert(path, json!({}));
            }
        }
        "onbuild" => {
            let (trigger, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let trigger = trigger.to_ascii_uppercase();
            match trigger.as_str() {
                "" => return Err(need_args()),
                "ONBUILD" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string())
                }
                "FROM" | "MAINTAINER" => {
                    return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"))
                }
                _ => {}
            }
            let line = format!("{trigger} {}", args.trim()).trim_end().to_string();
            let mut list = object
                .get("OnBuild")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            list.push(json!(line));
            object.insert("OnBuild".into(), json!(list));
        }
        _ => return Err(format!("{word} is not a valid change command")),
    }
    Ok(())
}

/// A JSON array of strings (the exec form), or None for the shell form.
fn exec_form(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// The config's environment so far, for `$VAR` in later instructions.
fn env_of(config: &Value) -> Vec<(String, String)> {
    config
        .get("Env")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn map_field<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = object.entry(key.to_string()).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("just made an object")
}

/// `ENV`/`LABEL` arguments: `k=v k2="v 2"`, or the legacy `key value with spaces`.
fn name_values(
    rest: &str,
    instruction: &str,
    env: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let words = words(rest)?;
    let Some(first) = words.first() else {
        return Err(format!("{instruction} requires at least one argument"));
    };
    if !first.contains('=') {
        // The legacy form: one name, the rest of the line is its value.
        let (name, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{instruction} must have two arguments"))?;
        return Ok(vec![(name.to_string(), process_word(value.trim(), env)?)]);
    }
    let mut pairs = Vec::new();
    for word in &words {
        let (name, value) = word.split_once('=').ok_or_else(|| {
            format!("Syntax error - can't find = in {word:?}. Must be of the form: name=value")
        })?;
        if name.is_empty() {
            return Err(format!("{instruction} names can not be blank"));
        }
        pairs.push((process_word(name, env)?, process_word(value, env)?));
    }
    Ok(pairs)
}

/// Splits on whitespace outside quotes; quotes and escapes are kept (for
/// [`process_word`]).
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut current));
                    in_word = false;
                }
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
                in_word = true;
                continue;
            }
            _ => {}
        }
        current.push(c);
        in_word = true;
    }
    if quote.is_some() {
        return Err(format!(
            "unexpected end of statement while looking for matching quote in {text:?}"
        ));
    }
    if in_word {
        out.push(current);
    }
    Ok(out)
}

/// One word as the Dockerfile's shell lexer reads it: quotes removed, escapes applied,
/// variables expanded from `env`.
fn process_word(word: &str, env: &[(String, String)]) -> Result<String, String> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    out.push(chars[i]);
                    i += 1;
                }
                i += 1;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if i + 1 < chars.len() && matches!(chars[i + 1], '"' | '\\' | '$') => {
                            out.push(chars[i + 1]);
                            i += 2;
                        }
                        '$' => i = expand(&chars, i, env, &mut out)?,
                        c => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
            }
            '\\' => {
                if let Some(&next) = chars.get(i + 1) {
                    out.push(next);
                }
                i += 2;
            }
            '$' => i = expand(&chars, i, env, &mut out)?,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Expands the variable at `chars[at]` (a `$`) into `out`; returns the index after it.
fn expand(
    chars: &[char],
    at: usize,
    env: &[(String, String)],
    out: &mut String,
) -> Result<usize, String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = at + 1;
    match chars.get(i) {
        Some('{') => {
            i += 1;
            let start = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if name.is_empty() {
                return Err("bad substitution: a variable name is missing".to_string());
            }
            let value = lookup(&name);
            if chars.get(i) == Some(&':') && matches!(chars.get(i + 1), Some('-' | '+')) {
                let modifier = chars[i + 1];
                i += 2;
                let start = i;
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let word = process_word(&word, env)?;
                let set = value.as_deref().is_some_and(|v| !v.is_empty());
                match (modifier, set) {
                    ('-', true) => out.push_str(value.as_deref().unwrap_or("")),
                    ('-', false) | ('+', true) => out.push_str(&word),
                    _ => {}
                }
            } else {
                out.push_str(value.as_deref().unwrap_or(""));
            }
            if chars.get(i) != Some(&'}') {
                return Err("bad substitution: a closing } is missing".to_string());
            }
            Ok(i + 1)
        }
        Some(&c) if is_name(c) => {
            let start = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            out.push_str(lookup(&name).as_deref().unwrap_or(""));
            Ok(i)
        }
        _ => {
            out.push('$');
            Ok(i)
        }
    }
}

/// WORKDIR: a relative path is taken from the current one; the result is clean.
fn workdir(current: &str, requested: &str) -> String {
    if requested.starts_with('/') {
        clean_path(requested)
    } else {
        clean_path(&format!("/{current}/{requested}"))
    }
}

/// Go's `path.Clean` of an absolute path (`..` stops at `/`).
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// An EXPOSE word: `80`, `80/tcp`, `8000-8002/udp` -> `80/tcp`, ...
pub fn port_specs(spec: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {p}"))
    };
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(ports)?, port(ports)?),
    };
    if last < first {
        return Err(format!(
            "invalid range specified for container port: {ports}"
        ));
    }
    Ok((first..=last).map(|p| format!("{p}/{proto}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Value {
        let mut config = empty_config();
        apply(
            &mut config,
            &changes.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        config
    }

    #[test]
    fn cmd_entrypoint_exec_and_shell_forms() {
        let c = applied(&[r#"CMD ["/bin/sh", "-c", "echo hi"]"#]);
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        let c = applied(&["cmd echo $HOME"]);
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "echo $HOME"]));
        let c = applied(&[r#"ENTRYPOINT ["top", "-b"]"#]);
        assert_eq!(c["Entrypoint"], json!(["top", "-b"]));
        assert_eq!(c["Cmd"], Value::Null);
        let c = applied(&["CMD [\"x\"]", "ENTRYPOINT [\"y\"]"]);
        assert_eq!(c["Cmd"], json!(["x"]));
        // Not JSON: the shell form, as written.
        let c = applied(&["CMD [oops"]);
        assert_eq!(c["Cmd"], json!(["/bin/sh", "-c", "[oops"]));
    }

    #[test]
    fn env_forms_quotes_and_expansion() {
        let c = applied(&[
            "ENV A=1 B=\"two words\" C='$A'",
            "ENV D=$A-${B} E=${UNSET:-dflt} F=${A:+alt}",
            "ENV legacy value with spaces",
            "ENV A=3",
            "env G=a\\ b",
        ]);
        assert_eq!(
            c["Env"],
            json!([
                "A=3",
                "B=two words",
                "C=$A",
                "D=1-two words",
                "E=dflt",
                "F=alt",
                "legacy=value with spaces",
                "G=a b"
            ])
        );
    }

    #[test]
    fn workdir_user_expose_volume_label_onbuild_stopsignal() {
        let c = applied(&[
            "ENV BASE=/srv",
            "WORKDIR $BASE",
            "WORKDIR app/../data",
            "USER 1000:1000",
            "EXPOSE 80 53/udp 8000-8001",
            "VOLUME [\"/v1\", \"/v2\"]",
            "VOLUME /v3",
            "LABEL a=b \"c d\"=e",
            "ONBUILD run echo hi",
            "STOPSIGNAL SIGINT",
        ]);
        assert_eq!(c["WorkingDir"], json!("/srv/data"));
        assert_eq!(c["User"], json!("1000:1000"));
        assert_eq!(
            c["ExposedPorts"],
            json!({"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}})
        );
        assert_eq!(c["Volumes"], json!({"/v1": {}, "/v2": {}, "/v3": {}}));
        assert_eq!(c["Labels"], json!({"a": "b", "c d": "e"}));
        assert_eq!(c["OnBuild"], json!(["RUN echo hi"]));
        assert_eq!(c["StopSignal"], json!("SIGINT"));
    }

    #[test]
    fn invalid_changes_are_refused_before_any_applies() {
        let mut config = empty_config();
        let err = apply(
            &mut config,
            &["ENV A=1".to_string(), "RUN rm -rf /".to_string()],
        )
        .unwrap_err();
        assert_eq!(err, "run is not a valid change command");
        assert_eq!(config["Env"], Value::Null);
        for (change, message) in [
            ("ENV A=1 B", "can't find = in \"B\""),
            ("CMD", "CMD requires at least one argument"),
            ("EXPOSE abc", "invalid containerPort: abc"),
            ("ENV A=\"open", "matching quote"),
            ("ONBUILD ONBUILD CMD x", "Chaining ONBUILD"),
        ] {
            let err = apply(&mut empty_config(), &[change.to_string()]).unwrap_err();
            assert!(err.contains(message), "{change}: {err}");
        }
    }

    #[test]
    fn continuation_lines_join() {
        let c = applied(&["ENV A=1 \\\n  B=2"]);
        assert_eq!(c["Env"], json!(["A=1", "B=2"]));
    }
}
