//! The steps of a classic build, as dockerd 20.10's `builder/dockerfile` runs them:
//! each instruction makes an image on the one before (its parent), so the cache is
//! the images themselves: a step is reused when a child of the current image was
//! made by the same step (its `container_config`, whose `Cmd` names the instruction,
//! the build args RUN saw, and for COPY and ADD the checksum of what was copied).
//!
//! - FROM takes an image (pulled when missing or with `pull`), an earlier stage, or
//!   `scratch`, and runs the image's ONBUILD triggers.
//! - RUN runs in a real container of the Docker front end (the same runtime, networks
//!   and limits as `docker run`), its output streamed, then committed and removed.
//! - COPY, ADD and WORKDIR write into the image's root filesystem mounted (an overlay
//!   with a fresh upper directory) by the daemon, then commit that upper directory.
//! - The others change the config alone: an image with an empty layer.
//!
//! Unlike dockerd, a step that changes the config alone makes no container (dockerd
//! creates one it never starts, and prints its ID): the stream has no `Running in`
//! line for them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::copy::CopyStep;
use super::{BuildDir, BuildError, BuildOptions, Output, RunningContainer};
use crate::docker::error::ApiError;
use crate::docker::{DockerServer, NAMESPACE};
use crate::image::build::dockerfile::{
    self, Command, CommandLine, Dockerfile, Healthcheck, Instruction, Vars,
};
use crate::image::build::index::ContextIndex;
use crate::image::changes::port_specs;
use crate::image::registry::{Credentials, ImageReference};

/// Build args every build knows without an ARG (dockerd's `builtinAllowedBuildArgs`);
/// they stay out of the cache key and the image's history unless declared.
pub(super) const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Which stages run, and how many steps that is.
#[derive(Debug)]
pub(super) struct Plan {
    /// Indexes of the stages to build, in order.
    stages: Vec<usize>,
    total_steps: usize,
}

impl Plan {
    /// The target stage (or the last) and the stages it needs, through FROM and
    /// `COPY --from`; a reference written with a variable keeps every earlier stage.
    pub(super) fn new(dockerfile: &Dockerfile, options: &BuildOptions) -> Result<Plan, ApiError> {
        let names: Vec<Option<String>> = dockerfile
            .stages
            .iter()
            .map(|stage| stage_name(&stage.from))
            .collect();
        let target = if options.target.is_empty() {
            dockerfile.stages.len().saturating_sub(1)
        } else {
            let wanted = options.target.to_ascii_lowercase();
            names
                .iter()
                .position(|n| n.as_deref() == Some(wanted.as_str()))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "failed to reach build target {} in Dockerfile",
                        crate::image::bounded(&options.target, crate::image::MAX_ECHO)
                    ))
                })?
        };
        let find = |reference: &str, before: usize| -> Option<Vec<usize>> {
            if reference.contains('$') {
                return Some((0..before).collect());
            }
            let lower = reference.to_ascii_lowercase();
            if let Some(i) = names[..before]
                .iter()
                .position(|n| n.as_deref() == Some(lower.as_str()))
            {
                return Some(vec![i]);
            }
            match reference.parse::<usize>() {
                Ok(i) if i < before => Some(vec![i]),
                _ => None,
            }
        };
        let mut needed = BTreeSet::new();
        let mut pending = vec![target];
        while let Some(index) = pending.pop() {
            if !needed.insert(index) {
                continue;
            }
            let stage = &dockerfile.stages[index];
            if let Some(base) = stage.from.args.first() {
                pending.extend(find(base, index).unwrap_or_default());
            }
            for instruction in &stage.instructions {
                if instruction.keyword == "copy" {
                    for (flag, value) in &instruction.flags {
                        if flag == "from" {
                            pending.extend(find(value, index).unwrap_or_default());
                        }
                    }
                }
            }
        }
        let stages: Vec<usize> = needed.into_iter().collect();
        let total_steps = dockerfile.meta_args.len()
            + stages
                .iter()
                .map(|&i| 1 + dockerfile.stages[i].instructions.len())
                .sum::<usize>()
            + options.labels.len();
        Ok(Plan {
            stages,
            total_steps,
        })
    }
}

/// The `AS name` of a FROM, lowercased.
fn stage_name(from: &Instruction) -> Option<String> {
    match from.args.as_slice() {
        [_, word, name] if word.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
        _ => None,
    }
}

pub(super) fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

pub(super) fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| json!(s)).collect())
}

/// `KEY=value` entries: the variables an instruction's words expand with.
pub(super) struct EnvVars(Vec<String>);

impl Vars for EnvVars {
    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().rev().find_map(|entry| {
            entry
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_string)
        })
    }
}

/// One stage as it is being built.
pub(super) struct Stage {
    /// The current image (`None` before the first layer of a `FROM scratch`).
    pub(super) image: Option<String>,
    /// The image's config (`Cmd`, `Env`, `WorkingDir`, ...): dockerd's `runConfig`.
    pub(super) config: Map<String, Value>,
    /// ARGs declared in this stage, with their values (`None`: declared, no value).
    pub(super) args: BTreeMap<String, Option<String>>,
    pub(super) maintainer: String,
}

impl Stage {
    pub(super) fn env(&self) -> Vec<String> {
        strings(self.config.get("Env"))
    }

    pub(super) fn shell(&self) -> Vec<String> {
        let shell = strings(self.config.get("Shell"));
        if shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            shell
        }
    }

    /// ARG values visible now, as `KEY=value`, without those the env sets (ENV wins).
    pub(super) fn arg_env(&self) -> Vec<String> {
        let env = self.env();
        let set: BTreeSet<&str> = env
            .iter()
            .map(|e| e.split('=').next().unwrap_or(e))
            .collect();
        self.args
            .iter()
            .filter(|(name, _)| !set.contains(name.as_str()))
            .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
            .collect()
    }

    /// What the instruction's words expand with: the args, then the env over them.
    pub(super) fn vars(&self) -> EnvVars {
        let mut all = self.arg_env();
        all.extend(self.env());
        EnvVars(all)
    }

    /// The config with `Cmd` naming a step that changes nothing on disk (dockerd's
    /// `withCmdComment`: `["/bin/sh", "-c", "#(nop) ", "ENV A=b"]`).
    pub(super) fn nop_config(&self, comment: &str) -> Map<String, Value> {
        let mut config = self.config.clone();
        let mut cmd = self.shell();
        cmd.push("#(nop) ".to_string());
        cmd.push(comment.to_string());
        config.insert("Cmd".into(), string_list(&cmd));
        config
    }

    /// The single-word form (WORKDIR, COPY, ADD: `withCmdCommentString`).
    pub(super) fn nop_string_config(&self, comment: &str) -> Map<String, Value> {
        let mut config = self.config.clone();
        let mut cmd = self.shell();
        cmd.push(format!("#(nop) {comment}"));
        config.insert("Cmd".into(), string_list(&cmd));
        config
    }
}

/// A Dockerfile's build, step by step.
pub(super) struct Builder<'a> {
    pub(super) server: &'a DockerServer,
    pub(super) dir: &'a BuildDir,
    pub(super) options: &'a BuildOptions,
    pub(super) output: &'a Output,
    pub(super) escape: char,
    pub(super) step: usize,
    pub(super) total: usize,
    /// Build args given with the request and not declared by any ARG yet.
    pub(super) unused_args: BTreeSet<String>,
    /// Meta ARGs (before the first FROM) with their values.
    pub(super) meta_args: BTreeMap<String, Option<String>>,
    /// Built stages: by index, and by name.
    pub(super) stage_images: Vec<Option<String>>,
    pub(super) stage_names: HashMap<String, usize>,
    /// Directories made for steps (mount points), numbered.
    pub(super) scratch: usize,
    /// The `cache_from` images here, by ID (once one gave a step, only that one, as
    /// dockerd's `ImageCache` stays on its source).
    pub(super) cache_from: Vec<String>,
    /// The context's index (extracted to `<build dir>/context` by the first COPY or
    /// ADD the cache does not have).
    pub(super) context: Arc<ContextIndex>,
    /// The container of the RUN under way (for a cancelled build's cleanup).
    pub(super) running: RunningContainer,
}

impl<'a> Builder<'a> {
    pub(super) fn new(
        server: &'a DockerServer,
        dir: &'a BuildDir,
        options: &'a BuildOptions,
        output: &'a Output,
        context: Arc<ContextIndex>,
        running: RunningContainer,
    ) -> Builder<'a> {
        Builder {
            server,
            dir,
            options,
            output,
            escape: '\\',
            step: 0,
            total: 0,
            unused_args: options
                .build_args
                .keys()
                .filter(|k| !PROXY_ARGS.contains(&k.as_str()))
                .cloned()
                .collect(),
            meta_args: BTreeMap::new(),
            stage_images: Vec::new(),
            stage_names: HashMap::new(),
            scratch: 0,
            cache_from: options
                .cache_from
                .iter()
                .filter_map(|name| server.images.get(NAMESPACE, name).map(|image| image.id))
                .collect(),
            context,
            running,
        }
    }

    pub(super) async fn print_step(&mut self, instruction: &Instruction) {
        self.step += 1;
        self.output
            .stream(format!(
                "Step {}/{} : {}\n",
                self.step, self.total, instruction.original
            ))
            .await;
    }

    /// Runs the planned stages; the last one's image is the result.
    pub(super) async fn run(
        mut self,
        dockerfile: &Dockerfile,
        plan: &Plan,
    ) -> Result<String, BuildError> {
        self.escape = dockerfile.escape;
        self.total = plan.total_steps;
        for meta in &dockerfile.meta_args {
            self.print_step(meta).await;
            let vars = EnvVars(self.meta_env());
            let Command::Arg(pairs) = meta
                .command(&vars, self.escape)
                .map_err(|m| line_error(meta, m))?
            else {
                return Err(line_error(meta, "not an ARG".to_string()));
            };
            for (name, default) in pairs {
                let value = self.arg_value(&name, default);
                self.meta_args.insert(name, value);
            }
        }
        self.stage_images = vec![None; dockerfile.stages.len()];
        let mut last = None;
        let last_stage = plan.stages.last().copied();
        for &index in &plan.stages {
            let stage = &dockerfile.stages[index];
            let mut state = self.start_stage(&stage.from).await?;
            let mut instructions: Vec<&Instruction> = stage.instructions.iter().collect();
            let label_steps: Vec<Instruction>;
            if Some(index) == last_stage && !self.options.labels.is_empty() {
                label_steps = self
                    .options
                    .labels
                    .iter()
                    .map(|(k, v)| label_instruction(k, v))
                    .collect();
                instructions.extend(label_steps.iter());
            }
            for instruction in instructions {
                self.print_step(instruction).await;
                self.dispatch(&mut state, instruction).await?;
                self.output
                    .stream(format!(
                        " ---> {}\n",
                        short(state.image.as_deref().unwrap_or(""))
                    ))
                    .await;
            }
            let image = self.commit_if_scratch(&mut state).await?;
            self.output.aux_id(&image).await;
            self.stage_images[index] = Some(image.clone());
            if let Some(name) = stage_name(&stage.from) {
                self.stage_names.insert(name, index);
            }
            last = Some(image);
        }
        if !self.unused_args.is_empty() {
            let names: Vec<&str> = self.unused_args.iter().map(String::as_str).collect();
            self.output
                .stream(format!(
                    "[Warning] One or more build-args [{}] were not consumed\n",
                    names.join(" ")
                ))
                .await;
        }
        last.ok_or_else(|| BuildError::new("No image was generated. Is your Dockerfile empty?"))
    }

    /// The meta ARGs as `KEY=value` (what FROM expands with).
    pub(super) fn meta_env(&self) -> Vec<String> {
        self.meta_args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect()
    }

    /// An ARG's value: the request's build arg, else its default.
    pub(super) fn arg_value(&mut self, name: &str, default: Option<String>) -> Option<String> {
        self.unused_args.remove(name);
        match self.options.build_args.get(name) {
            Some(Some(value)) => Some(value.clone()),
            _ => default,
        }
    }

    /// FROM: the base (an image, an earlier stage or scratch), then its triggers.
    pub(super) async fn start_stage(&mut self, from: &Instruction) -> Result<Stage, BuildError> {
        self.print_step(from).await;
        let vars = EnvVars(self.meta_env());
        let Command::From {
            image, platform, ..
        } = from
            .command(&vars, self.escape)
            .map_err(|m| line_error(from, m))?
        else {
            return Err(line_error(from, "not a FROM".to_string()));
        };
        if let Some(platform) = &platform {
            super::check_platform(platform).map_err(|m| line_error(from, m))?;
        }
        let base = if image.eq_ignore_ascii_case("scratch") {
            None
        } else if let Some(&index) = self.stage_names.get(&image.to_ascii_lowercase()) {
            self.stage_images[index].clone()
        } else {
            Some(self.image_for(&image).await?)
        };
        let config = match &base {
            Some(id) => self.image_config(id)?,
            None => Map::new(),
        };
        let mut state = Stage {
            image: base,
            config,
            args: BTreeMap::new(),
            maintainer: String::new(),
        };
        self.output
            .stream(format!(
                " ---> {}\n",
                short(state.image.as_deref().unwrap_or(""))
            ))
            .await;
        let triggers = strings(state.config.get("OnBuild"));
        if !triggers.is_empty() {
            state.config.insert("OnBuild".into(), Value::Null);
            self.output
                .stream(format!(
                    "# Executing {} build trigger{}\n",
                    triggers.len(),
                    if triggers.len() == 1 { "" } else { "s" }
                ))
                .await;
            for trigger in triggers {
                let instruction = dockerfile::parse_trigger(&trigger).map_err(|err| {
                    BuildError::new(format!("ONBUILD trigger {trigger:?}: {err}"))
                })?;
                if matches!(
                    instruction.keyword.as_str(),
                    "onbuild" | "from" | "maintainer"
                ) {
                    return Err(BuildError::new(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        instruction.keyword.to_ascii_uppercase()
                    )));
                }
                Box::pin(self.dispatch(&mut state, &instruction)).await?;
            }
        }
        Ok(state)
    }

    /// The image `name` names, pulled when missing (or always with `pull`).
    pub(super) async fn image_for(&self, name: &str) -> Result<String, BuildError> {
        if !self.options.pull {
            if let Some(image) = self.server.images.get(NAMESPACE, name) {
                return Ok(image.id);
            }
        }
        let reference = ImageReference::parse(name)
            .map_err(|err| BuildError::new(format!("invalid reference format {name:?}: {err}")))?;
        let credentials = self
            .options
            .auth
            .get(reference.registry())
            .cloned()
            .unwrap_or(Credentials::Anonymous);
        self.output
            .stream(format!(
                "Pulling {}\n",
                crate::docker::images::familiar(&reference.to_string())
            ))
            .await;
        let image = self
            .server
            .images
            .pull(NAMESPACE, &reference.to_string(), &credentials)
            .await
            .map_err(|err| BuildError::new(format!("pulling {name}: {err}")))?;
        Ok(image.id)
    }

    /// An image's `config` object.
    pub(super) fn image_config(&self, id: &str) -> Result<Map<String, Value>, BuildError> {
        let image = self.server.images.get(NAMESPACE, id).ok_or_else(|| {
            BuildError::new(format!("the image {id} was removed during the build"))
        })?;
        let bytes = self.server.images.config_json(&image)?;
        let mut config: Value = serde_json::from_slice(&bytes)
            .map_err(|err| BuildError::new(format!("the config of {id} is not JSON: {err}")))?;
        Ok(match config["config"].take() {
            Value::Object(map) => map,
            _ => Map::new(),
        })
    }

    /// A stage that made no image (`FROM scratch` alone) gets one: an empty image.
    pub(super) async fn commit_if_scratch(
        &mut self,
        state: &mut Stage,
    ) -> Result<String, BuildError> {
        if let Some(image) = &state.image {
            return Ok(image.clone());
        }
        let config = state.nop_config("FROM scratch");
        self.commit_config(state, config).await?;
        Ok(state.image.clone().unwrap_or_default())
    }

    pub(super) async fn dispatch(
        &mut self,
        state: &mut Stage,
        instruction: &Instruction,
    ) -> Result<(), BuildError> {
        let vars = state.vars();
        let command = instruction
            .command(&vars, self.escape)
            .map_err(|m| line_error(instruction, m))?;
        match command {
            Command::Run(line) => self.run_step(state, line).await,
            Command::Copy {
                sources,
                dest,
                from,
                chown,
                chmod,
            } => {
                let copy = CopyStep {
                    name: "COPY",
                    sources,
                    dest,
                    from,
                    chown,
                    chmod,
                    extract: false,
                };
                self.copy_step(state, copy).await
            }
            Command::Add {
                sources,
                dest,
                chown,
                chmod,
            } => {
                let copy = CopyStep {
                    name: "ADD",
                    sources,
                    dest,
                    from: None,
                    chown,
                    chmod,
                    extract: true,
                };
                self.copy_step(state, copy).await
            }
            Command::Workdir(path) => self.workdir_step(state, &path).await,
            Command::From { .. } => Err(line_error(
                instruction,
                "FROM starts a stage; it cannot be a step".to_string(),
            )),
            other => self.config_step(state, other).await,
        }
    }

    /// The instructions that change the config alone.
    pub(super) async fn config_step(
        &mut self,
        state: &mut Stage,
        command: Command,
    ) -> Result<(), BuildError> {
        let comment = match command {
            Command::Env(pairs) => {
                let mut env = state.env();
                let mut words = Vec::new();
                for (key, value) in pairs {
                    if key.is_empty() {
                        return Err(BuildError::new("ENV names can not be blank"));
                    }
                    let entry = format!("{key}={value}");
                    words.push(entry.clone());
                    match env
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(key.as_str()))
                    {
                        Some(existing) => *existing = entry,
                        None => env.push(entry),
                    }
                }
                state.config.insert("Env".into(), string_list(&env));
                format!("ENV {}", words.join(" "))
            }
            Command::Label(pairs) => {
                let labels = state.config.entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                let mut words = Vec::new();
                for (key, value) in pairs {
                    if key.is_empty() {
                        return Err(BuildError::new("LABEL names can not be blank"));
                    }
                    words.push(format!("{key}={value}"));
                    labels[key] = json!(value);
                }
                format!("LABEL {}", words.join(" "))
            }
            Command::Arg(pairs) => {
                let mut words = Vec::new();
                for (name, default) in pairs {
                    let default = default.or_else(|| self.meta_args.get(&name).cloned().flatten());
                    let value = self.arg_value(&name, default);
                    words.push(match &value {
                        Some(v) => format!("{name}={v}"),
                        None => name.clone(),
                    });
                    state.args.insert(name, value);
                }
                format!("ARG {}", words.join(" "))
            }
            Command::Cmd(line) => {
                let cmd = self.command_line(state, line);
                state.config.insert("Cmd".into(), string_list(&cmd));
                format!("CMD {}", serde_json::to_string(&cmd).unwrap_or_default())
            }
            Command::Entrypoint(line) => {
                let entrypoint = match line {
                    CommandLine::Exec(exec) if exec.is_empty() => Vec::new(),
                    CommandLine::Shell(text) if text.trim().is_empty() => Vec::new(),
                    line => self.command_line(state, line),
                };
                state.config.insert(
                    "Entrypoint".into(),
                    if entrypoint.is_empty() {
                        Value::Null
                    } else {
                        string_list(&entrypoint)
                    },
                );
                // An ENTRYPOINT resets the CMD of the base image (not one set in this
                // stage before it: dockerd's `cmdSet`).
                state.config.insert("Cmd".into(), Value::Null);
                format!(
                    "ENTRYPOINT {}",
                    serde_json::to_string(&entrypoint).unwrap_or_default()
                )
            }
            Command::Shell(shell) => {
                state.config.insert("Shell".into(), string_list(&shell));
                format!(
                    "SHELL {}",
                    serde_json::to_string(&shell).unwrap_or_default()
                )
            }
            Command::User(user) => {
                state.config.insert("User".into(), json!(user));
                format!("USER {user}")
            }
            Command::Expose(ports) => {
                let mut exposed = Vec::new();
                let map = state
                    .config
                    .entry("ExposedPorts")
                    .or_insert_with(|| json!({}));
                if !map.is_object() {
                    *map = json!({});
                }
                for word in &ports {
                    for port in port_specs(word).map_err(BuildError::new)? {
                        exposed.push(port.clone());
                        map[port] = json!({});
                    }
                }
                format!("EXPOSE {}", ports.join(" "))
            }
            Command::Volume(volumes) => {
                let map = state.config.entry("Volumes").or_insert_with(|| json!({}));
                if !map.is_object() {
                    *map = json!({});
                }
                for volume in &volumes {
                    if volume.trim().is_empty() {
                        return Err(BuildError::new(
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    map[volume.as_str()] = json!({});
                }
                format!("VOLUME [{}]", volumes.join(" "))
            }
            Command::StopSignal(signal) => {
                state.config.insert("StopSignal".into(), json!(signal));
                format!("STOPSIGNAL {signal}")
            }
            Command::Healthcheck(check) => {
                let value = healthcheck_json(check.as_ref());
                let comment = format!("HEALTHCHECK {value}");
                state.config.insert("Healthcheck".into(), value);
                comment
            }
            Command::Onbuild(trigger) => {
                let mut triggers = strings(state.config.get("OnBuild"));
                triggers.push(trigger.clone());
                state
                    .config
                    .insert("OnBuild".into(), string_list(&triggers));
                format!("ONBUILD {trigger}")
            }
            Command::Maintainer(name) => {
                state.maintainer = name.clone();
                format!("MAINTAINER {name}")
            }
            Command::Run(_)
            | Command::Copy { .. }
            | Command::Add { .. }
            | Command::Workdir(_)
            | Command::From { .. } => unreachable!("dispatched elsewhere"),
        };
        let config = state.nop_config(&comment);
        self.commit_config(state, config).await
    }

    /// A command line as a list: the exec form as is, the shell form after the shell.
    pub(super) fn command_line(&self, state: &Stage, line: CommandLine) -> Vec<String> {
        match line {
            CommandLine::Exec(exec) => exec,
            CommandLine::Shell(text) => {
                let mut cmd = state.shell();
                cmd.push(text);
                cmd
            }
        }
    }
}

/// A HEALTHCHECK as the image config's `Healthcheck`.
fn healthcheck_json(check: Option<&Healthcheck>) -> Value {
    match check {
        None => json!({"Test": ["NONE"]}),
        Some(check) => {
            let mut value = json!({ "Test": check.test });
            for (key, nanos) in [
                ("Interval", check.interval_ns),
                ("Timeout", check.timeout_ns),
                ("StartPeriod", check.start_period_ns),
            ] {
                if nanos != 0 {
                    value[key] = json!(nanos);
                }
            }
            if check.retries != 0 {
                value["Retries"] = json!(check.retries);
            }
            value
        }
    }
}

/// A `--label` of the request as the LABEL step dockerd adds for it.
fn label_instruction(key: &str, value: &str) -> Instruction {
    let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let original = format!("LABEL {}={}", quoted(key), quoted(value));
    match dockerfile::parse(&format!("FROM scratch\n{original}")) {
        Ok(mut parsed) => parsed
            .stages
            .pop()
            .and_then(|mut s| s.instructions.pop())
            .unwrap_or_else(|| fallback_label(&original)),
        Err(_) => fallback_label(&original),
    }
}

fn fallback_label(original: &str) -> Instruction {
    Instruction {
        line: 0,
        keyword: "label".into(),
        original: original.to_string(),
        flags: Vec::new(),
        json: false,
        args: Vec::new(),
    }
}

pub(super) fn line_error(instruction: &Instruction, message: String) -> BuildError {
    BuildError::new(format!(
        "Dockerfile line {}: {}: {message}",
        instruction.line,
        instruction.keyword.to_ascii_uppercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(text: &str, target: &str) -> Result<Plan, ApiError> {
        let dockerfile = dockerfile::parse(text).unwrap();
        let options = BuildOptions {
            target: target.to_string(),
            ..Default::default()
        };
        Plan::new(&dockerfile, &options)
    }

    #[test]
    fn only_the_stages_the_target_needs() {
        let text = "ARG V=1\nFROM busybox AS base\nRUN true\nFROM busybox AS unused\nRUN false\n\
                    FROM base AS tools\nRUN true\nFROM scratch\nCOPY --from=tools /a /a\n";
        let plan = plan_of(text, "").unwrap();
        assert_eq!(plan.stages, vec![0, 2, 3]);
        assert_eq!(plan.total_steps, 1 + 2 + 2 + 2);
        let plan = plan_of(text, "unused").unwrap();
        assert_eq!(plan.stages, vec![1]);
        let err = plan_of(text, "nope").unwrap_err();
        assert_eq!(
            err.message,
            "failed to reach build target nope in Dockerfile"
        );
    }

    #[test]
    fn paths_and_ports() {
        assert_eq!(
            crate::image::changes::clean_path("/app/../srv/./x/"),
            "/srv/x"
        );
        assert_eq!(
            port_specs("8000-8002/udp").unwrap(),
            vec!["8000/udp", "8001/udp", "8002/udp"]
        );
        assert!(port_specs("80/icmp").is_err());
        assert!(port_specs("x").is_err());
    }
}
