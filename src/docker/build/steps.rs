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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::{BuildDir, BuildError, BuildOptions, Output};
use crate::docker::containers::{create_container, remove_container};
use crate::docker::error::ApiError;
use crate::docker::{DockerServer, NAMESPACE};
use crate::image::build::context::{self, CopyAs};
use crate::image::build::dockerfile::{
    self, Command, CommandLine, Dockerfile, Healthcheck, Instruction, Vars,
};
use crate::image::build::index::ContextIndex;
use crate::image::registry::{Credentials, ImageReference};
use crate::image::rwlayer::commit::CommitOptions;
use crate::image::rwlayer::{LayerSource, RUNTIME_MOUNTPOINTS};
use crate::runtime::monitor_control::{AttachStreams, Event};

/// Build args every build knows without an ARG (dockerd's `builtinAllowedBuildArgs`);
/// they stay out of the cache key and the image's history unless declared.
const PROXY_ARGS: &[&str] = &[
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

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn strings(value: Option<&Value>) -> Vec<String> {
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

fn string_list(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| json!(s)).collect())
}

/// `KEY=value` entries: the variables an instruction's words expand with.
struct EnvVars(Vec<String>);

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
struct Stage {
    /// The current image (`None` before the first layer of a `FROM scratch`).
    image: Option<String>,
    /// The image's config (`Cmd`, `Env`, `WorkingDir`, ...): dockerd's `runConfig`.
    config: Map<String, Value>,
    /// ARGs declared in this stage, with their values (`None`: declared, no value).
    args: BTreeMap<String, Option<String>>,
    maintainer: String,
}

impl Stage {
    fn env(&self) -> Vec<String> {
        strings(self.config.get("Env"))
    }

    fn shell(&self) -> Vec<String> {
        let shell = strings(self.config.get("Shell"));
        if shell.is_empty() {
            vec!["/bin/sh".to_string(), "-c".to_string()]
        } else {
            shell
        }
    }

    /// ARG values visible now, as `KEY=value`, without those the env sets (ENV wins).
    fn arg_env(&self) -> Vec<String> {
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
    fn vars(&self) -> EnvVars {
        let mut all = self.arg_env();
        all.extend(self.env());
        EnvVars(all)
    }

    /// The config with `Cmd` naming a step that changes nothing on disk (dockerd's
    /// `withCmdComment`: `["/bin/sh", "-c", "#(nop) ", "ENV A=b"]`).
    fn nop_config(&self, comment: &str) -> Map<String, Value> {
        let mut config = self.config.clone();
        let mut cmd = self.shell();
        cmd.push("#(nop) ".to_string());
        cmd.push(comment.to_string());
        config.insert("Cmd".into(), string_list(&cmd));
        config
    }

    /// The single-word form (WORKDIR, COPY, ADD: `withCmdCommentString`).
    fn nop_string_config(&self, comment: &str) -> Map<String, Value> {
        let mut config = self.config.clone();
        let mut cmd = self.shell();
        cmd.push(format!("#(nop) {comment}"));
        config.insert("Cmd".into(), string_list(&cmd));
        config
    }
}

/// A Dockerfile's build, step by step.
pub(super) struct Builder<'a> {
    server: &'a DockerServer,
    dir: &'a BuildDir,
    options: &'a BuildOptions,
    output: &'a Output,
    escape: char,
    step: usize,
    total: usize,
    /// Build args given with the request and not declared by any ARG yet.
    unused_args: BTreeSet<String>,
    /// Meta ARGs (before the first FROM) with their values.
    meta_args: BTreeMap<String, Option<String>>,
    /// Built stages: by index, and by name.
    stage_images: Vec<Option<String>>,
    stage_names: HashMap<String, usize>,
    /// Directories made for steps (mount points), numbered.
    scratch: usize,
    /// The `cache_from` images here, by ID (once one gave a step, only that one, as
    /// dockerd's `ImageCache` stays on its source).
    cache_from: Vec<String>,
    /// The context's index (extracted to `<build dir>/context` by the first COPY or
    /// ADD the cache does not have).
    context: Arc<ContextIndex>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(
        server: &'a DockerServer,
        dir: &'a BuildDir,
        options: &'a BuildOptions,
        output: &'a Output,
        context: Arc<ContextIndex>,
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
        }
    }

    async fn print_step(&mut self, instruction: &Instruction) {
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
    fn meta_env(&self) -> Vec<String> {
        self.meta_args
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect()
    }

    /// An ARG's value: the request's build arg, else its default.
    fn arg_value(&mut self, name: &str, default: Option<String>) -> Option<String> {
        self.unused_args.remove(name);
        match self.options.build_args.get(name) {
            Some(Some(value)) => Some(value.clone()),
            _ => default,
        }
    }

    /// FROM: the base (an image, an earlier stage or scratch), then its triggers.
    async fn start_stage(&mut self, from: &Instruction) -> Result<Stage, BuildError> {
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
    async fn image_for(&self, name: &str) -> Result<String, BuildError> {
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
    fn image_config(&self, id: &str) -> Result<Map<String, Value>, BuildError> {
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
    async fn commit_if_scratch(&mut self, state: &mut Stage) -> Result<String, BuildError> {
        if let Some(image) = &state.image {
            return Ok(image.clone());
        }
        let config = state.nop_config("FROM scratch");
        self.commit_config(state, config).await?;
        Ok(state.image.clone().unwrap_or_default())
    }

    async fn dispatch(
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
    async fn config_step(&mut self, state: &mut Stage, command: Command) -> Result<(), BuildError> {
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
                    for port in exposed_ports(word)? {
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
    fn command_line(&self, state: &Stage, line: CommandLine) -> Vec<String> {
        match line {
            CommandLine::Exec(exec) => exec,
            CommandLine::Shell(text) => {
                let mut cmd = state.shell();
                cmd.push(text);
                cmd
            }
        }
    }

    /// The image made by the step `container_config`, if the cache has it: a child of
    /// the current image made by the same step.
    fn probe(&self, state: &Stage, container_config: &Map<String, Value>) -> Option<String> {
        if self.options.no_cache {
            return None;
        }
        let candidates = match &state.image {
            Some(parent) => self.server.images.children(NAMESPACE, parent),
            None => self
                .server
                .images
                .list(NAMESPACE)
                .into_iter()
                .filter(|image| image.parent.is_none() && image.layers.len() <= 1)
                .collect(),
        };
        let wanted = Value::Object(container_config.clone());
        let mut best: Option<(String, String)> = None;
        for image in candidates {
            let Ok(bytes) = self.server.images.config_json(&image) else {
                continue;
            };
            let Ok(config) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if config.get("container_config") != Some(&wanted) {
                continue;
            }
            let created = config["created"].as_str().unwrap_or("").to_string();
            if best.as_ref().is_none_or(|(_, c)| created > *c) {
                best = Some((image.id.clone(), created));
            }
        }
        best.map(|(id, _)| id)
    }

    /// Takes a cache hit for `container_config`, if there is one: the local cache,
    /// then the `cache_from` images.
    async fn cached(&mut self, state: &mut Stage, container_config: &Map<String, Value>) -> bool {
        let hit = match self.probe(state, container_config) {
            Some(id) => Some(id),
            None => match self.probe_cache_from(state, container_config).await {
                Ok(hit) => hit,
                Err(err) => {
                    tracing::warn!(
                        "the cache_from images could not give a step: {}",
                        err.message
                    );
                    None
                }
            },
        };
        match hit {
            Some(id) => {
                self.output.stream(" ---> Using cache\n").await;
                state.image = Some(id);
                true
            }
            None => false,
        }
    }

    /// An image's history entries and diff IDs.
    fn history_of(
        &self,
        id: &str,
    ) -> Result<(crate::image::Image, Vec<Value>, Vec<String>), BuildError> {
        let image = self.server.images.get(NAMESPACE, id).ok_or_else(|| {
            BuildError::new(format!("the image {id} was removed during the build"))
        })?;
        let bytes = self.server.images.config_json(&image)?;
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|err| BuildError::new(format!("the config of {id} is not JSON: {err}")))?;
        let history = config["history"].as_array().cloned().unwrap_or_default();
        let diff_ids = strings(config["rootfs"].get("diff_ids"));
        Ok((image, history, diff_ids))
    }

    /// dockerd's `ImageCache.GetCache` for `cache_from`: an image whose history goes on
    /// from the current image's (the same entries, the same layers) with this step
    /// (its `created_by`) gives it: the image itself when the step is its last, else a
    /// new image of the current one and that step's layer.
    async fn probe_cache_from(
        &mut self,
        state: &Stage,
        container_config: &Map<String, Value>,
    ) -> Result<Option<String>, BuildError> {
        if self.options.no_cache || self.cache_from.is_empty() {
            return Ok(None);
        }
        let created_by = strings(container_config.get("Cmd")).join(" ");
        let (parent_history, parent_diffs) = match &state.image {
            Some(id) => {
                let (_, history, diffs) = self.history_of(id)?;
                (history, diffs)
            }
            None => (Vec::new(), Vec::new()),
        };
        let same_entry = |a: &Value, b: &Value| {
            a["created_by"] == b["created_by"]
                && a["empty_layer"].as_bool().unwrap_or(false)
                    == b["empty_layer"].as_bool().unwrap_or(false)
        };
        for source in self.cache_from.clone() {
            let (image, history, diffs) = self.history_of(&source)?;
            let n = parent_history.len();
            if history.len() <= n
                || !history
                    .iter()
                    .zip(&parent_history)
                    .all(|(a, b)| same_entry(a, b))
                || !diffs.starts_with(&parent_diffs)
            {
                continue;
            }
            let entry = &history[n];
            if entry["created_by"].as_str() != Some(created_by.as_str()) {
                continue;
            }
            self.cache_from = vec![source.clone()];
            if history.len() == n + 1 {
                return Ok(Some(source));
            }
            let layer = if entry["empty_layer"].as_bool().unwrap_or(false) {
                None
            } else {
                match image.layers.get(parent_diffs.len()) {
                    Some(layer) => Some(layer.clone()),
                    None => continue,
                }
            };
            let created = entry["created"].as_str().unwrap_or_default().to_string();
            let config = self.with_image(state, state.config.clone());
            let options = CommitOptions {
                container_id: String::new(),
                author: state.maintainer.clone(),
                comment: String::new(),
                config: Value::Object(config),
                container_config: Value::Object(container_config.clone()),
                created_by,
                reference: None,
            };
            let derived = self
                .server
                .images
                .derive(NAMESPACE, state.image.as_deref(), layer, created, options)
                .await?;
            return Ok(Some(derived.id));
        }
        Ok(None)
    }

    /// The config and container config of a step's image: `Image` is the parent.
    fn with_image(&self, state: &Stage, mut config: Map<String, Value>) -> Map<String, Value> {
        config.insert(
            "Image".into(),
            json!(state.image.clone().unwrap_or_default()),
        );
        config
    }

    /// Commits a step that changed the config alone (after a cache probe).
    async fn commit_config(
        &mut self,
        state: &mut Stage,
        container_config: Map<String, Value>,
    ) -> Result<(), BuildError> {
        let container_config = self.with_image(state, container_config);
        if self.cached(state, &container_config).await {
            return Ok(());
        }
        let empty = self.dir.path.join("empty");
        std::fs::create_dir_all(&empty)
            .map_err(|err| BuildError::new(format!("creating {}: {err}", empty.display())))?;
        let layer = LayerSource {
            upper: empty,
            lowers: Vec::new(),
        };
        self.commit(state, layer, &[], container_config, String::new())
            .await
    }

    /// Commits `layer` on the current image with the state's config.
    async fn commit(
        &mut self,
        state: &mut Stage,
        layer: LayerSource,
        skip: &'static [&'static str],
        container_config: Map<String, Value>,
        container_id: String,
    ) -> Result<(), BuildError> {
        let created_by = strings(container_config.get("Cmd")).join(" ");
        let config = self.with_image(state, state.config.clone());
        let options = CommitOptions {
            container_id,
            author: state.maintainer.clone(),
            comment: String::new(),
            config: Value::Object(config),
            container_config: Value::Object(container_config),
            created_by,
            reference: None,
        };
        let image = self
            .server
            .images
            .commit(NAMESPACE, state.image.as_deref(), layer, skip, options)
            .await?;
        state.image = Some(image.id);
        Ok(())
    }

    /// RUN: a container of the current image runs the command with the build args in
    /// its environment; its layer is committed.
    async fn run_step(&mut self, state: &mut Stage, line: CommandLine) -> Result<(), BuildError> {
        let cmd = self.command_line(state, line);
        let mut build_env = state.arg_env();
        // Proxy args given with the request are in the environment, not the history.
        let declared: BTreeSet<String> = build_env
            .iter()
            .map(|e| e.split('=').next().unwrap_or(e).to_string())
            .collect();
        build_env.sort();
        let mut save_cmd = cmd.clone();
        if !build_env.is_empty() {
            save_cmd = std::iter::once(format!("|{}", build_env.len()))
                .chain(build_env.iter().cloned())
                .chain(cmd.iter().cloned())
                .collect();
        }
        let mut probe = state.config.clone();
        probe.insert("Cmd".into(), string_list(&save_cmd));
        if !save_cmd.is_empty() {
            probe.insert("Entrypoint".into(), Value::Null);
        }
        let probe = self.with_image(state, probe);
        if self.cached(state, &probe).await {
            return Ok(());
        }
        let Some(parent) = state.image.clone() else {
            return Err(BuildError::new(format!(
                "The command '{}' cannot run: a scratch image has no files yet",
                cmd.join(" ")
            )));
        };
        let mut env = state.env();
        env.extend(build_env.iter().cloned());
        for proxy in PROXY_ARGS {
            if declared.contains(*proxy) {
                continue;
            }
            if let Some(Some(value)) = self.options.build_args.get(*proxy) {
                env.push(format!("{proxy}={value}"));
            }
        }
        let request = self.run_request(state, &parent, &cmd, &env);
        let id = create_container(self.server, None, request).await?;
        self.output
            .stream(format!(" ---> Running in {}\n", short(&id)))
            .await;
        let ran = self.run_container(&id).await;
        let record = self.server.runtime.find_container(NAMESPACE, &id);
        let exit_code = match ran {
            Ok(code) => code,
            Err(err) => {
                if let Some(record) = &record {
                    self.remove_intermediate(record, self.options.force_remove)
                        .await;
                }
                return Err(err);
            }
        };
        if exit_code != 0 {
            if let Some(record) = &record {
                self.remove_intermediate(record, self.options.force_remove)
                    .await;
            }
            return Err(BuildError {
                message: format!(
                    "The command '{}' returned a non-zero code: {exit_code}",
                    cmd.join(" ")
                ),
                code: Some(exit_code),
            });
        }
        let layer = self.server.runtime.container_layer(NAMESPACE, &id)?;
        let committed = self
            .commit(state, layer, RUNTIME_MOUNTPOINTS, probe, id.clone())
            .await;
        if let Some(record) = &record {
            let remove = self.options.remove || self.options.force_remove;
            self.remove_intermediate(record, remove).await;
        }
        committed
    }

    /// The create request of a RUN's container.
    fn run_request(&self, state: &Stage, parent: &str, cmd: &[String], env: &[String]) -> Value {
        let o = self.options;
        let mut host = json!({
            "NetworkMode": if o.network_mode.is_empty() { "default" } else { o.network_mode.as_str() },
        });
        if !o.extra_hosts.is_empty() {
            host["ExtraHosts"] = json!(o.extra_hosts);
        }
        for (key, value) in [
            ("ShmSize", o.shm_size),
            ("Memory", o.memory),
            ("MemorySwap", o.memory_swap),
            ("CpuShares", o.cpu_shares),
            ("CpuPeriod", o.cpu_period),
            ("CpuQuota", o.cpu_quota),
        ] {
            if value != 0 {
                host[key] = json!(value);
            }
        }
        if !o.cpuset_cpus.is_empty() {
            host["CpusetCpus"] = json!(o.cpuset_cpus);
        }
        let mut request = json!({
            "Image": parent,
            "Cmd": cmd,
            "Entrypoint": [""],
            "Env": env,
            "WorkingDir": state.config.get("WorkingDir").cloned().unwrap_or(json!("")),
            "User": state.config.get("User").cloned().unwrap_or(json!("")),
            "Healthcheck": {"Test": ["NONE"]},
            "AttachStdout": true,
            "AttachStderr": true,
            "HostConfig": host,
        });
        if let Some(volumes) = state.config.get("Volumes").filter(|v| v.is_object()) {
            request["Volumes"] = volumes.clone();
        }
        request
    }

    /// Starts a RUN's container and streams its output; its exit code.
    async fn run_container(&self, id: &str) -> Result<i32, BuildError> {
        let session = self
            .server
            .runtime
            .attach(
                NAMESPACE,
                id,
                AttachStreams {
                    stdin: false,
                    stdout: true,
                    stderr: true,
                },
            )
            .await?;
        self.server.runtime.start_container(NAMESPACE, id).await?;
        let crate::runtime::monitor_control::Session {
            control,
            mut events,
        } = session;
        let mut exit = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Stdout(data)) => {
                    self.output
                        .stream(String::from_utf8_lossy(&data).into_owned())
                        .await
                }
                Ok(Event::Stderr(data)) => self.output.stderr(&data).await,
                Ok(Event::Exit { exit_code, .. }) => {
                    exit = Some(exit_code);
                    break;
                }
                Err(err) => {
                    tracing::debug!(container = %id, "build step output: {err}");
                    break;
                }
            }
        }
        drop(control);
        if let Some(code) = exit {
            return Ok(code);
        }
        // The session ended early: the record has the exit once the monitor wrote it.
        for _ in 0..600 {
            match self.server.runtime.find_container(NAMESPACE, id) {
                Some(c) if c.state == crate::runtime::ContainerState::Exited => {
                    return Ok(c.exit_code)
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                None => {
                    return Err(BuildError::new(format!(
                        "the container {id} of a RUN step vanished"
                    )))
                }
            }
        }
        Err(BuildError::new(format!(
            "the container {id} of a RUN step did not report its exit"
        )))
    }

    async fn remove_intermediate(&self, record: &crate::runtime::ContainerRecord, remove: bool) {
        if !remove {
            return;
        }
        self.output
            .stream(format!(
                "Removing intermediate container {}\n",
                short(&record.id)
            ))
            .await;
        if let Err(err) = remove_container(self.server, record, true).await {
            tracing::warn!(container = %record.id, "removing a build container: {}", err.message);
        }
    }

    /// A new directory for a step's mount.
    fn step_dir(&mut self) -> PathBuf {
        self.scratch += 1;
        self.dir.path.join(format!("step-{}", self.scratch))
    }

    /// Mounts the current image's root filesystem writable (a fresh upper dir), lets
    /// `work` change it, unmounts, and commits the upper dir.
    async fn layer_step<F>(
        &mut self,
        state: &mut Stage,
        container_config: Map<String, Value>,
        work: F,
    ) -> Result<(), BuildError>
    where
        F: FnOnce(&Path) -> Result<(), BuildError> + Send + 'static,
    {
        let chain = match &state.image {
            Some(id) => self
                .server
                .images
                .get(NAMESPACE, id)
                .map(|image| image.chain_ids())
                .ok_or_else(|| {
                    BuildError::new(format!("the image {id} was removed during the build"))
                })?,
            None => Vec::new(),
        };
        let step_dir = self.step_dir();
        let snapshots = self.server.images.clone();
        let lowers: Vec<PathBuf> = chain
            .iter()
            .rev()
            .map(|c| self.server.images.snapshots().layer_dir(c))
            .collect();
        let done = {
            let step_dir = step_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
                let rootfs = step_dir.join("rootfs");
                crate::image::snapshot::mount_rootfs(
                    snapshots.snapshots(),
                    &chain,
                    &step_dir,
                    &rootfs,
                    false,
                )
                .map_err(|err| {
                    BuildError::new(format!("mounting the image for a build step: {err}"))
                })?;
                let result = work(&rootfs);
                let unmounted = crate::image::snapshot::unmount_rootfs(&rootfs);
                result?;
                unmounted.map_err(|err| BuildError::new(err.to_string()))
            })
            .await
            .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        };
        done?;
        let layer = LayerSource {
            upper: step_dir.join("upper"),
            lowers,
        };
        let committed = self
            .commit(state, layer, &[], container_config, String::new())
            .await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(step_dir)).await;
        committed
    }

    /// WORKDIR: the config's working directory, made in the image when missing.
    async fn workdir_step(&mut self, state: &mut Stage, path: &str) -> Result<(), BuildError> {
        let current = state
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let joined = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{current}/{path}")
        };
        let dir = clean_path(&joined);
        state.config.insert("WorkingDir".into(), json!(dir));
        let probe = self.with_image(state, state.nop_string_config(&format!("WORKDIR {dir}")));
        if self.cached(state, &probe).await {
            return Ok(());
        }
        self.layer_step(state, probe, move |rootfs| {
            let target = context::resolve_in_scope(rootfs, &dir, true)?;
            context::make_dirs(&target, 0, 0)?;
            Ok(())
        })
        .await
    }

    /// COPY and ADD.
    async fn copy_step(&mut self, state: &mut Stage, copy: CopyStep) -> Result<(), BuildError> {
        let CopyStep {
            name,
            sources,
            dest,
            from,
            chown,
            chmod,
            extract,
        } = copy;
        let mode = chmod
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| BuildError::new(format!("invalid chmod parameter: {m}")))
            })
            .transpose()?;
        if sources.is_empty() {
            return Err(BuildError::new(format!(
                "{name} requires at least two arguments"
            )));
        }
        for source in &sources {
            if source.starts_with("http://") || source.starts_with("https://") {
                return Err(BuildError::new(format!(
                    "{name} {source}: remote sources are not supported by this daemon, \
                     which does not fetch from the network; download the file into the \
                     build context and {name} it from there"
                )));
            }
            if source.starts_with("git@") {
                return Err(BuildError::new(format!(
                    "{name} {source}: git sources are not supported by this daemon"
                )));
            }
        }
        // Where the files come from: the context, an earlier stage, or an image.
        let (source_root, source_mount) = match &from {
            None => (self.dir.path.join("context"), None),
            Some(reference) => {
                let image = self.copy_source_image(reference).await?;
                let mount = self.mount_readonly(&image).await?;
                (mount.join("rootfs"), Some(mount))
            }
        };
        let resolved = {
            let root = source_root.clone();
            let sources = sources.clone();
            let index = self.context.clone();
            let in_context = from.is_none();
            tokio::task::spawn_blocking(move || {
                if in_context {
                    resolve_context_sources(&index, &root, &sources, name)
                } else {
                    resolve_sources(&root, &sources, name)
                }
            })
            .await
            .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                self.unmount(source_mount).await;
                return Err(err);
            }
        };
        if resolved.len() > 1 && !dest.ends_with('/') {
            self.unmount(source_mount).await;
            return Err(BuildError::new(format!(
                "When using {name} with more than one source file, the destination must be \
                 a directory and end with a /"
            )));
        }
        let hash = if resolved.len() == 1 {
            resolved[0].hash.clone()
        } else {
            use sha2::Digest as _;
            let joined: Vec<&str> = resolved.iter().map(|s| s.hash.as_str()).collect();
            format!(
                "multi:{}",
                hex::encode(sha2::Sha256::digest(joined.join(",").as_bytes()))
            )
        };
        let mut flags = String::new();
        if let Some(chown) = &chown {
            flags.push_str(&format!("--chown={chown} "));
        }
        if let Some(chmod) = &chmod {
            flags.push_str(&format!("--chmod={chmod} "));
        }
        let workdir = state
            .config
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let dest = if dest.starts_with('/') {
            dest
        } else {
            let ends_in_slash = dest.ends_with('/') || dest == ".";
            let mut joined = clean_path(&format!("{workdir}/{dest}"));
            if ends_in_slash && !joined.ends_with('/') {
                joined.push('/');
            }
            joined
        };
        let probe = self.with_image(
            state,
            state.nop_string_config(&format!("{name} {flags}{hash} in {dest} ")),
        );
        if self.cached(state, &probe).await {
            self.unmount(source_mount).await;
            return Ok(());
        }
        let index = from.is_none().then(|| self.context.clone());
        let result = self
            .layer_step(state, probe, move |rootfs| {
                if let Some(index) = index {
                    index.materialize(&source_root)?;
                }
                let (uid, gid) = match &chown {
                    Some(spec) => context::chown_ids(rootfs, spec)?,
                    None => (0, 0),
                };
                let copy_as = CopyAs { uid, gid, mode };
                for source in &resolved {
                    copy_one(rootfs, source, &dest, copy_as, extract)?;
                }
                Ok(())
            })
            .await;
        self.unmount(source_mount).await;
        result
    }

    /// The image a `COPY --from` names: a stage (by name or index) or an image.
    async fn copy_source_image(&self, reference: &str) -> Result<String, BuildError> {
        let lower = reference.to_ascii_lowercase();
        if let Some(&index) = self.stage_names.get(&lower) {
            return self.stage_images[index]
                .clone()
                .ok_or_else(|| BuildError::new(format!("the stage {reference} has no image")));
        }
        if let Ok(index) = reference.parse::<usize>() {
            return match self.stage_images.get(index) {
                Some(Some(image)) => Ok(image.clone()),
                _ => Err(BuildError::new(format!(
                    "invalid from flag value {reference}: the stage is not built before this one"
                ))),
            };
        }
        self.image_for(reference).await
    }

    /// Mounts an image read-only for a `COPY --from`; returns the mount's directory.
    async fn mount_readonly(&mut self, image: &str) -> Result<PathBuf, BuildError> {
        let chain = self
            .server
            .images
            .get(NAMESPACE, image)
            .map(|image| image.chain_ids())
            .ok_or_else(|| {
                BuildError::new(format!("the image {image} was removed during the build"))
            })?;
        let step_dir = self.step_dir();
        let images = self.server.images.clone();
        let dir = step_dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::image::snapshot::mount_rootfs(
                images.snapshots(),
                &chain,
                &dir,
                &dir.join("rootfs"),
                true,
            )
        })
        .await
        .map_err(|err| BuildError::new(format!("a build step's task failed: {err}")))?
        .map_err(|err| {
            BuildError::new(format!("mounting the image {image} to copy from: {err}"))
        })?;
        Ok(step_dir)
    }

    async fn unmount(&self, mount: Option<PathBuf>) {
        if let Some(dir) = mount {
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(err) = crate::image::snapshot::unmount_rootfs(&dir.join("rootfs")) {
                    tracing::warn!("unmounting {}: {err}", dir.display());
                }
                let _ = std::fs::remove_dir_all(&dir);
            })
            .await;
        }
    }
}

/// One COPY or ADD, expanded.
struct CopyStep {
    name: &'static str,
    sources: Vec<String>,
    dest: String,
    from: Option<String>,
    chown: Option<String>,
    chmod: Option<String>,
    /// ADD: a local tar archive is extracted.
    extract: bool,
}

/// A source of a COPY, found.
struct Source {
    /// Where it is on this machine.
    path: PathBuf,
    /// Its name (the last component of what matched), for a file copied into a dir.
    name: String,
    hash: String,
}

/// The sources' paths in a source image's root filesystem `root` (wildcards
/// expanded, each resolved within it) and checksums.
fn resolve_sources(root: &Path, sources: &[String], name: &str) -> Result<Vec<Source>, BuildError> {
    let mut found = Vec::new();
    for source in sources {
        let matches = if context::has_wildcard(source) {
            let matched = context::glob(root, source)?;
            if matched.is_empty() {
                return Err(BuildError::new(format!(
                    "{name} failed: no source files were specified"
                )));
            }
            matched
        } else {
            vec![source.clone()]
        };
        for rel in matches {
            let path = context::resolve_in_scope(root, &rel, true)?;
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(BuildError::new(format!(
                    "{name} failed: stat {rel}: file does not exist in the source image"
                )));
            }
            let hash = context::checksum(&path)?;
            found.push(Source {
                path,
                name: base_name(&rel),
                hash,
            });
        }
    }
    Ok(found)
}

/// The sources in the build context, from its index (nothing is read from disk): their
/// paths once the context is extracted to `context_dir`, and checksums.
fn resolve_context_sources(
    index: &ContextIndex,
    context_dir: &Path,
    sources: &[String],
    name: &str,
) -> Result<Vec<Source>, BuildError> {
    let mut found = Vec::new();
    for source in sources {
        let matches = if context::has_wildcard(source) {
            let matched = index.glob(source)?;
            if matched.is_empty() {
                return Err(BuildError::new(format!(
                    "{name} failed: no source files were specified"
                )));
            }
            matched
        } else {
            vec![source.clone()]
        };
        for rel in matches {
            let path = index.resolve(&rel, true)?;
            if !path.is_empty() && index.get(&path).is_none() {
                return Err(BuildError::new(format!(
                    "{name} failed: file not found in build context or excluded by \
                     .dockerignore: stat {rel}: file does not exist"
                )));
            }
            found.push(Source {
                path: context_dir.join(&path),
                name: base_name(&rel),
                hash: index.checksum(&path)?,
            });
        }
    }
    Ok(found)
}

fn base_name(rel: &str) -> String {
    Path::new(rel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies one source to `dest` inside `rootfs`, as the classic builder does: a
/// directory's contents into the destination directory; a file to `dest`, or into it
/// when it ends with `/` or is a directory; with `extract`, a tar archive unpacked
/// into the destination directory.
fn copy_one(
    rootfs: &Path,
    source: &Source,
    dest: &str,
    copy_as: CopyAs,
    extract: bool,
) -> Result<(), BuildError> {
    let meta = std::fs::symlink_metadata(&source.path)
        .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?;
    let target = context::resolve_in_scope(rootfs, dest, true)?;
    if meta.is_dir() {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        let mut names: Vec<_> = std::fs::read_dir(&source.path)
            .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for entry in names {
            context::copy_path(&source.path.join(&entry), &target.join(&entry), copy_as)?;
        }
        return Ok(());
    }
    if extract && meta.is_file() && context::is_archive(&source.path) {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        let file = std::fs::File::open(&source.path)
            .map_err(|err| BuildError::new(format!("reading {}: {err}", source.path.display())))?;
        context::extract(file, &target, true)?;
        return Ok(());
    }
    let into_dir = dest.ends_with('/') || target.is_dir();
    let file_target = if into_dir {
        context::make_dirs(&target, copy_as.uid, copy_as.gid)?;
        target.join(&source.name)
    } else {
        if let Some(parent) = target.parent() {
            context::make_dirs(parent, copy_as.uid, copy_as.gid)?;
        }
        target
    };
    context::copy_path(&source.path, &file_target, copy_as)?;
    Ok(())
}

/// Go's `path.Clean` of an absolute path.
fn clean_path(path: &str) -> String {
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

/// An EXPOSE word: `80`, `80/udp`, `8000-8002/tcp`.
fn exposed_ports(word: &str) -> Result<Vec<String>, BuildError> {
    let invalid = || BuildError::new(format!("invalid containerPort: {word}"));
    let (ports, protocol) = word.split_once('/').unwrap_or((word, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(BuildError::new(format!("invalid proto: {protocol}")));
    }
    let (start, end) = ports.split_once('-').unwrap_or((ports, ports));
    let start: u16 = start.parse().map_err(|_| invalid())?;
    let end: u16 = end.parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    Ok((start..=end).map(|p| format!("{p}/{protocol}")).collect())
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

fn line_error(instruction: &Instruction, message: String) -> BuildError {
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
        assert_eq!(clean_path("/app/../srv/./x/"), "/srv/x");
        assert_eq!(clean_path("//"), "/");
        assert_eq!(
            exposed_ports("8000-8002/udp").unwrap(),
            vec!["8000/udp", "8001/udp", "8002/udp"]
        );
        assert!(exposed_ports("80/icmp").is_err());
        assert!(exposed_ports("x").is_err());
    }
}
