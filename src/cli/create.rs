//! `run` and `create`: the flags as the create request's body (ports, mounts, env,
//! restart policies, sizes), the image pulled per `--pull`, docker's exit codes.

use serde_json::{json, Map, Value};

use super::connection::Client;
use super::containers::{CreateOpts, RunArgs};
use super::session::Session;
use super::{enc, out, tty, CliError, Result};

/// docker's RAMInBytes: a number with an optional b, k, m, g, t, p suffix (binary).
pub fn parse_bytes(text: &str) -> Result<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower
        .strip_suffix('b')
        .filter(|s| !s.is_empty() && s.ends_with(|c: char| c.is_ascii_alphabetic()))
        .unwrap_or(&lower);
    let lower = lower.strip_suffix("ib").unwrap_or(lower);
    let (number, unit) = match lower.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => lower.split_at(i),
        None => (lower, ""),
    };
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(CliError::usage(format!("invalid size: {text:?}"))),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| CliError::usage(format!("invalid size: {text:?}")))?;
    if n < 0.0 {
        return Err(CliError::usage(format!("invalid size: {text:?}")));
    }
    Ok((n * mult) as i64)
}

/// `-e K=V`, or `-e K` taking K from this environment (dropped when unset, as docker).
pub(super) fn env_entry(entry: &str) -> Option<String> {
    if entry.contains('=') {
        return Some(entry.to_string());
    }
    std::env::var(entry).ok().map(|v| format!("{entry}={v}"))
}

pub(super) fn env_list(opts: &CreateOpts) -> Result<Vec<String>> {
    let mut env = Vec::new();
    for file in &opts.env_file {
        let text = std::fs::read_to_string(file).map_err(|err| {
            CliError::usage(format!("reading the env file {}: {err}", file.display()))
        })?;
        for line in text.lines() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('=') {
                return Err(CliError::usage(format!(
                    "invalid environment variable {line:?} in {}",
                    file.display()
                )));
            }
            env.extend(env_entry(line));
        }
    }
    env.extend(opts.env.iter().filter_map(|e| env_entry(e)));
    Ok(env)
}

/// `-p` specs as ExposedPorts and PortBindings.
pub(super) fn ports(specs: &[String]) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let mut exposed = Map::new();
    let mut bindings: Map<String, Value> = Map::new();
    for spec in specs {
        let bad = || CliError::usage(format!("invalid port specification: {spec:?}"));
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((r, p)) => (r, p.to_string()),
            None => (spec.as_str(), "tcp".to_string()),
        };
        let (host_part, container) = match rest.rsplit_once(':') {
            Some((h, c)) => (Some(h), c),
            None => (None, rest),
        };
        let (ip, host_port) = match host_part {
            None => (String::new(), String::new()),
            Some(h) => match h.rsplit_once(':') {
                Some((ip, p)) => (
                    ip.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.to_string(),
                ),
                None => (String::new(), h.to_string()),
            },
        };
        let range = |text: &str| -> Result<(u16, u16)> {
            match text.split_once('-') {
                Some((a, b)) => Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
                None => {
                    let p = text.parse().map_err(|_| bad())?;
                    Ok((p, p))
                }
            }
        };
        let (c_lo, c_hi) = range(container)?;
        if c_lo > c_hi {
            return Err(bad());
        }
        let host_range = if host_port.is_empty() {
            None
        } else {
            Some(range(&host_port)?)
        };
        for (i, port) in (c_lo..=c_hi).enumerate() {
            let key = format!("{port}/{proto}");
            exposed.insert(key.clone(), json!({}));
            let host = match host_range {
                None => String::new(),
                // Equal ranges map one to one; one container port takes the range.
                Some((h_lo, h_hi)) if h_hi - h_lo == c_hi - c_lo => (h_lo as usize + i).to_string(),
                Some(_) => host_port.clone(),
            };
            if host_part.is_some() {
                let list = bindings.entry(key).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!({"HostIp": ip, "HostPort": host}));
                }
            }
        }
    }
    Ok((exposed, bindings))
}

/// `--mount type=..,source=..,target=..` as the API's Mount.
pub fn parse_mount(spec: &str) -> Result<Value> {
    let mut mount = Map::new();
    let mut bind = Map::new();
    let mut volume = Map::new();
    let mut tmpfs = Map::new();
    let mut driver_opts = Map::new();
    let mut kind = "volume".to_string();
    for field in spec.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let flag = |v: &Option<String>| -> Result<bool> {
            match v.as_deref() {
                None | Some("1") | Some("true") => Ok(true),
                Some("0") | Some("false") => Ok(false),
                Some(other) => Err(CliError::usage(format!(
                    "invalid value {other:?} for {key} in --mount {spec:?}"
                ))),
            }
        };
        let need = || {
            value.clone().ok_or_else(|| {
                CliError::usage(format!(
                    "invalid field {field:?} in --mount {spec:?}: must be a key=value pair"
                ))
            })
        };
        match key.as_str() {
            "type" => kind = need()?,
            "source" | "src" => {
                mount.insert("Source".into(), need()?.into());
            }
            "target" | "destination" | "dst" => {
                mount.insert("Target".into(), need()?.into());
            }
            "readonly" | "ro" => {
                mount.insert("ReadOnly".into(), flag(&value)?.into());
            }
            "consistency" => {}
            "bind-propagation" => {
                bind.insert("Propagation".into(), need()?.into());
            }
            "volume-nocopy" => {
                volume.insert("NoCopy".into(), flag(&value)?.into());
            }
            "volume-driver" => {
                volume.insert("DriverConfig".into(), json!({"Name": need()?}));
            }
            "volume-opt" => {
                let v = need()?;
                let (k, val) = v.split_once('=').ok_or_else(|| {
                    CliError::usage(format!("invalid volume-opt {v:?} in --mount {spec:?}"))
                })?;
                driver_opts.insert(k.into(), val.into());
            }
            "tmpfs-size" => {
                tmpfs.insert("SizeBytes".into(), parse_bytes(&need()?)?.into());
            }
            "tmpfs-mode" => {
                let mode = u32::from_str_radix(&need()?, 8).map_err(|_| {
                    CliError::usage(format!("invalid tmpfs-mode in --mount {spec:?}"))
                })?;
                tmpfs.insert("Mode".into(), mode.into());
            }
            _ => {
                return Err(CliError::usage(format!(
                    "unexpected key {key:?} in --mount {spec:?}"
                )))
            }
        }
    }
    if !driver_opts.is_empty() {
        let config = volume
            .entry("DriverConfig")
            .or_insert_with(|| json!({"Name": "local"}));
        if let Some(c) = config.as_object_mut() {
            c.insert("Options".into(), Value::Object(driver_opts));
        }
    }
    mount.insert("Type".into(), kind.clone().into());
    if !bind.is_empty() {
        mount.insert("BindOptions".into(), Value::Object(bind));
    }
    if !volume.is_empty() {
        mount.insert("VolumeOptions".into(), Value::Object(volume));
    }
    if !tmpfs.is_empty() {
        mount.insert("TmpfsOptions".into(), Value::Object(tmpfs));
    }
    if !mount.contains_key("Target") {
        return Err(CliError::usage(format!(
            "invalid --mount {spec:?}: target is required"
        )));
    }
    Ok(Value::Object(mount))
}

pub(super) fn restart_policy(text: &str) -> Result<Value> {
    let (name, count) = match text.split_once(':') {
        Some((n, c)) => (
            n,
            c.parse::<i64>().map_err(|_| {
                CliError::usage(format!(
                    "invalid restart policy {text:?}: the count must be a number"
                ))
            })?,
        ),
        None => (text, 0),
    };
    match name {
        "no" | "always" | "unless-stopped" | "on-failure" => Ok(json!({"Name": name, "MaximumRetryCount": count})),
        _ => Err(CliError::usage(format!("invalid restart policy {text:?}: use no, always, unless-stopped or on-failure[:max-retries]"))),
    }
}

/// Capabilities as the docker CLI sends them: upper case with the `CAP_` prefix
/// (`ALL` as it is).
fn normalize_caps(caps: &[String]) -> Vec<String> {
    caps.iter()
        .map(|c| {
            let upper = c.to_ascii_uppercase();
            if upper == "ALL" || upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            }
        })
        .collect()
}

/// The create request's body for `opts` (`auto_remove` and `attach` from `run`).
pub fn create_body(opts: &CreateOpts, auto_remove: bool, attach: bool) -> Result<Value> {
    let (image, command) = opts
        .image_and_command
        .split_first()
        .ok_or_else(|| CliError::usage("\"run\" requires at least 1 argument: the image"))?;
    let (mut exposed, bindings) = ports(&opts.publish)?;
    // `--expose`: exposed, not published (docker's `PORT[-PORT][/PROTO]`).
    for spec in &opts.expose {
        let words = crate::image::changes::port_specs(spec).map_err(|err| {
            CliError::usage(format!("invalid range format for --expose: {spec}: {err}"))
        })?;
        for port in words {
            exposed.insert(port, json!({}));
        }
    }
    let mut binds = Vec::new();
    let mut anonymous = Map::new();
    for spec in &opts.volume {
        if spec.contains(':') {
            binds.push(Value::String(spec.clone()));
        } else {
            anonymous.insert(spec.clone(), json!({}));
        }
    }
    let mounts = opts
        .mount
        .iter()
        .map(|m| parse_mount(m))
        .collect::<Result<Vec<_>>>()?;
    let mut tmpfs = Map::new();
    for spec in &opts.tmpfs {
        let (path, options) = spec.split_once(':').unwrap_or((spec, ""));
        tmpfs.insert(path.into(), options.into());
    }
    let mut labels = Map::new();
    for label in &opts.label {
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        labels.insert(k.into(), v.into());
    }
    let mut host = Map::new();
    host.insert("Binds".into(), json!(binds));
    if !mounts.is_empty() {
        host.insert("Mounts".into(), json!(mounts));
    }
    host.insert("PortBindings".into(), Value::Object(bindings));
    host.insert("PublishAllPorts".into(), opts.publish_all.into());
    host.insert("AutoRemove".into(), auto_remove.into());
    host.insert("Privileged".into(), opts.privileged.into());
    host.insert("ReadonlyRootfs".into(), opts.read_only.into());
    if !opts.cap_add.is_empty() {
        host.insert("CapAdd".into(), json!(normalize_caps(&opts.cap_add)));
    }
    if !opts.cap_drop.is_empty() {
        host.insert("CapDrop".into(), json!(normalize_caps(&opts.cap_drop)));
    }
    if !tmpfs.is_empty() {
        host.insert("Tmpfs".into(), Value::Object(tmpfs));
    }
    if let Some(network) = &opts.network {
        host.insert("NetworkMode".into(), network.clone().into());
    }
    if let Some(restart) = &opts.restart {
        host.insert("RestartPolicy".into(), restart_policy(restart)?);
    }
    if let Some(memory) = &opts.memory {
        host.insert("Memory".into(), parse_bytes(memory)?.into());
    }
    if let Some(cpus) = opts.cpus {
        host.insert("NanoCpus".into(), ((cpus * 1e9) as i64).into());
    }
    if opts.init {
        host.insert("Init".into(), true.into());
    }
    if opts.tty {
        if let Some((rows, cols)) = tty::size() {
            host.insert("ConsoleSize".into(), json!([rows, cols]));
        }
    }
    let interactive_attach = opts.interactive && attach;
    let mut body = json!({
        "Image": image,
        "Env": env_list(opts)?,
        "Labels": labels,
        "Tty": opts.tty,
        "OpenStdin": opts.interactive,
        "StdinOnce": interactive_attach,
        "AttachStdin": interactive_attach,
        "AttachStdout": attach,
        "AttachStderr": attach,
        "ExposedPorts": exposed,
        "Volumes": anonymous,
        "HostConfig": host,
    });
    if !command.is_empty() {
        body["Cmd"] = json!(command);
    }
    if let Some(entrypoint) = &opts.entrypoint {
        // `--entrypoint ""` resets the image's entrypoint.
        body["Entrypoint"] = if entrypoint.is_empty() {
            json!([""])
        } else {
            json!([entrypoint])
        };
    }
    if let Some(user) = &opts.user {
        body["User"] = user.clone().into();
    }
    if let Some(dir) = &opts.workdir {
        body["WorkingDir"] = dir.clone().into();
    }
    if let Some(hostname) = &opts.hostname {
        body["Hostname"] = hostname.clone().into();
    }
    Ok(body)
}

/// Creates the container, pulling its image first per `--pull`; answers its ID.
pub(super) async fn create(
    client: &Client,
    opts: &CreateOpts,
    auto_remove: bool,
    attach: bool,
) -> Result<String> {
    let body = create_body(opts, auto_remove, attach)?;
    let image = opts.image_and_command[0].clone();
    let path = match &opts.name {
        Some(name) => format!("/containers/create?name={}", enc(name)),
        None => "/containers/create".to_string(),
    };
    match opts.pull.as_str() {
        "always" => super::images::pull_image(client, &image, false, true).await?,
        "missing" | "never" => {}
        other => {
            return Err(CliError::usage(format!(
            "invalid pull option: {other:?}: must be one of \"always\", \"missing\" or \"never\""
        )))
        }
    }
    let created = match client.post(&path, Some(&body)).await {
        Err(err)
            if err.is_not_found()
                && opts.pull == "missing"
                && err.message.contains("No such image") =>
        {
            eprintln!("Unable to find image '{image}' locally");
            super::images::pull_image(client, &image, false, true).await?;
            client.post(&path, Some(&body)).await?
        }
        other => other?,
    };
    for warning in created
        .get("Warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = warning.as_str() {
            eprintln!("WARNING: {w}");
        }
    }
    created
        .get("Id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            CliError::internal(format!(
                "create {image}: the daemon answered no container ID: {created}"
            ))
        })
}

/// docker's exit codes for a start that failed: 127 when the command is missing, 126
/// when it cannot be executed, else 125.
pub(super) fn start_error(err: CliError) -> CliError {
    if err.message.is_empty() {
        return err;
    }
    let lower = err.message.to_lowercase();
    let code = if lower.contains("executable file not found")
        || lower.contains("no such file or directory")
        || lower.contains("not found in $path")
    {
        127
    } else if lower.contains("permission denied")
        || lower.contains("is a directory")
        || lower.contains("exec format error")
    {
        126
    } else {
        125
    };
    CliError { code, ..err }
}

pub(super) async fn run_container(client: &Client, args: RunArgs) -> Result<()> {
    let opts = &args.opts;
    let attach = !args.detach;
    if opts.tty && opts.interactive && attach && !tty::stdin_is_tty() {
        return Err(CliError::internal("the input device is not a TTY"));
    }
    if args.rm && opts.restart.as_deref().is_some_and(|r| r != "no") {
        return Err(CliError::usage("Conflicting options: --restart and --rm"));
    }
    let detach_keys = detach_keys(args.detach_keys.as_deref())?;
    // As docker's run, a create that fails for a missing command is 127 (126 when it
    // cannot be executed): wharfd checks the command at create.
    let id = create(client, opts, args.rm, attach)
        .await
        .map_err(start_error)?;
    if args.detach {
        client
            .post(&format!("/containers/{id}/start"), None)
            .await
            .map_err(start_error)?;
        out(&format!("{id}\n"));
        return Ok(());
    }
    let session = Session {
        id: id.clone(),
        tty: opts.tty,
        stdin: opts.interactive,
        detach_keys,
        start: true,
        wait_condition: if args.rm { "removed" } else { "next-exit" },
    };
    match session.run(client).await.map_err(CliError::as_run_error)? {
        Some(code) => {
            if code == 0 {
                Ok(())
            } else {
                Err(CliError::exit(code as i32))
            }
        }
        None => Ok(()),
    }
}

pub(super) fn detach_keys(flag: Option<&str>) -> Result<(String, Vec<u8>)> {
    let text = flag.unwrap_or("ctrl-p,ctrl-q");
    let bytes = tty::parse_detach_keys(text).map_err(CliError::usage)?;
    Ok((text.to_string(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_ports_and_mounts() {
        assert_eq!(parse_bytes("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("1GB").unwrap(), 1 << 30);
        assert!(parse_bytes("x").is_err());
        let (exposed, bindings) = ports(&[
            "127.0.0.1:8080:80".into(),
            "53/udp".into(),
            "9000-9001:90-91".into(),
        ])
        .unwrap();
        assert!(exposed.contains_key("53/udp"));
        assert_eq!(
            bindings["80/tcp"],
            json!([{"HostIp": "127.0.0.1", "HostPort": "8080"}])
        );
        assert_eq!(
            bindings["91/tcp"],
            json!([{"HostIp": "", "HostPort": "9001"}])
        );
        let m = parse_mount("type=bind,source=/a,target=/b,readonly").unwrap();
        assert_eq!(
            m,
            json!({"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": true})
        );
        assert!(parse_mount("type=tmpfs").is_err());
    }
}
