//! The spec's `process`: args, env, cwd, terminal, user (resolved by [`super::user`]),
//! capabilities, rlimits, no_new_privileges and oom_score_adj (containerd's
//! `WithProcessArgs`, `WithEnv`, `WithProcessCwd`, `WithCapabilities`, ...).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, Process};

use super::user::resolve_user;
use super::{ImageDefaults, PodContext, SpecError, SpecOptions};
use crate::runtime::caps;
use crate::runtime::model::{ContainerSpec, SecurityOptions};

/// PATH given to a container whose image sets none (containerd's default).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process: args, env and cwd from the request and the image, the user, the
/// capabilities (also returned: the seccomp profile depends on them) and oom_score_adj
/// from `resources`.
pub(super) fn process(
    config: &ContainerSpec,
    pod: &PodContext,
    image: &ImageDefaults,
    opts: &SpecOptions,
) -> Result<(Process, HashSet<Capability>), SpecError> {
    let sc = &config.security;
    let resources = config.resources.as_ref();
    let args = process_args(config, image)?;
    let env = process_env(config, image, &pod.hostname);
    let cwd = working_dir(config, image)?;
    let user = resolve_user(&opts.rootfs, sc, &image.user)?;
    let (cap_set, ambient) = capabilities(sc, opts)?;
    let oom_score_adj = match resources {
        Some(r) => Some(oom_score_adj(r.oom_score_adj, opts.restrict_oom_score_adj)?),
        None => None,
    };

    let mut process = Process::default();
    process.set_terminal(Some(config.tty));
    process.set_user(user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd);
    process.set_capabilities(Some(caps::to_linux(&cap_set, &ambient)));
    // No rlimits: the container inherits the monitor's, as containerd 2 does (the old
    // 1024 open files default was too low for many programs).
    process.set_rlimits(None);
    // Unset rather than false: libcontainer loads a seccomp filter before dropping
    // capabilities only when the field is absent (a filter needs CAP_SYS_ADMIN or
    // no_new_privs to load), which is what runc does for false too.
    process.set_no_new_privileges(sc.no_new_privs.then_some(true));
    process.set_oom_score_adj(oom_score_adj);
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);

    Ok((process, cap_set))
}

/// The capabilities: the set `caps::compute` gives (Docker's defaults with the
/// request's add/drop, all for a privileged container, never more than wharfd's own
/// bounding set), and the ambient ones the request adds.
fn capabilities(
    sc: &SecurityOptions,
    opts: &SpecOptions,
) -> Result<(HashSet<Capability>, HashSet<Capability>), SpecError> {
    let cap_cfg = &sc.capabilities;
    let held = caps::from_mask(opts.bounding_capabilities.unwrap_or(u64::MAX));
    let cap_set = caps::compute(sc.privileged, &cap_cfg.add, &cap_cfg.drop, &held)?;
    let mut ambient = HashSet::new();
    for name in &cap_cfg.add_ambient {
        ambient.insert(caps::parse(name).ok_or_else(|| {
            SpecError::invalid(
                "linux.security_context.capabilities.add_ambient_capabilities",
                format!("unknown capability {name:?}"),
            )
        })?);
    }
    Ok((cap_set, ambient))
}

/// containerd's rule: `command` set -> command + args; else `args` set -> image
/// Entrypoint + args; else Entrypoint + Cmd. An empty result is an error.
pub fn process_args(
    config: &ContainerSpec,
    image: &ImageDefaults,
) -> Result<Vec<String>, SpecError> {
    let args: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(&config.args).cloned().collect()
    } else if !config.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(&config.args)
            .cloned()
            .collect()
    } else {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    };
    if args.is_empty() {
        return Err(SpecError::invalid(
            "command",
            "no command specified: command and args are empty and the image has no Entrypoint or Cmd",
        ));
    }
    Ok(args)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Sets `entry` in `env`, replacing an entry with the same key in place.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// Environment: a default PATH and HOSTNAME (as containerd), then the image's Env, then
/// the container's env; a later entry replaces an earlier one with the same key.
fn process_env(config: &ContainerSpec, image: &ImageDefaults, hostname: &str) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    if !hostname.is_empty() {
        env.push(format!("HOSTNAME={hostname}"));
    }
    for entry in &image.env {
        set_env(&mut env, entry.clone());
    }
    for (key, value) in &config.env {
        set_env(&mut env, format!("{key}={value}"));
    }
    env
}

/// cwd: the container's working_dir (must be absolute), else the image's WorkingDir, else "/".
fn working_dir(config: &ContainerSpec, image: &ImageDefaults) -> Result<PathBuf, SpecError> {
    if !config.working_dir.is_empty() {
        if !config.working_dir.starts_with('/') {
            return Err(SpecError::invalid(
                "working_dir",
                format!("{:?} is not an absolute path", config.working_dir),
            ));
        }
        return Ok(PathBuf::from(&config.working_dir));
    }
    if !image.working_dir.is_empty() {
        return Ok(Path::new("/").join(image.working_dir.trim_start_matches('/')));
    }
    Ok(PathBuf::from("/"))
}

/// The daemon's own oom_score_adj.
fn current_oom_score_adj() -> Result<i64, SpecError> {
    let path = PathBuf::from("/proc/self/oom_score_adj");
    let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Host {
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| SpecError::Host {
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a number"),
    })
}

/// The container's oom_score_adj: the request (-1000..=1000), raised to the daemon's own
/// when `restrict` is set (a process cannot lower it without CAP_SYS_RESOURCE).
fn oom_score_adj(requested: i64, restrict: bool) -> Result<i32, SpecError> {
    if !(-1000..=1000).contains(&requested) {
        return Err(SpecError::invalid(
            "linux.resources.oom_score_adj",
            format!("{requested} is outside -1000..1000"),
        ));
    }
    let mut value = requested;
    if restrict {
        value = value.max(current_oom_score_adj()?);
    }
    // In range -1000..=1000, so it fits.
    Ok(value as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::container_spec;
    use crate::runtime::spec::test_support::*;
    use oci_spec::runtime::Spec;

    #[test]
    fn args_merge() {
        let img = image();
        let mut c = config();
        assert_eq!(
            process_args(&c, &img).unwrap(),
            s(&["/entry", "cmd1", "cmd2"])
        );
        c.args = s(&["a1"]);
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/entry", "a1"]));
        c.command = s(&["/bin/echo"]);
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/bin/echo", "a1"]));
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), s(&["/bin/echo"]));
        let err = process_args(&config(), &ImageDefaults::default()).unwrap_err();
        assert!(err.to_string().contains("no command specified"), "{err}");
        assert_eq!(field(err), "command");
    }

    #[test]
    fn env_override_and_cwd() {
        let mut c = config();
        c.env = vec![("A".into(), "cri".into()), ("C".into(), "x=y".into())];
        let env = process_env(&c, &image(), "podhost");
        assert_eq!(
            env,
            s(&[
                "PATH=/image/bin",
                "HOSTNAME=podhost",
                "A=cri",
                "B=image",
                "C=x=y"
            ])
        );
        let env = process_env(&config(), &ImageDefaults::default(), "");
        assert_eq!(env, s(&[DEFAULT_PATH]));

        assert_eq!(working_dir(&c, &image()).unwrap(), PathBuf::from("/work"));
        assert_eq!(
            working_dir(&c, &ImageDefaults::default()).unwrap(),
            PathBuf::from("/")
        );
        c.working_dir = "/cri".into();
        assert_eq!(working_dir(&c, &image()).unwrap(), PathBuf::from("/cri"));
        c.working_dir = "rel".into();
        assert_eq!(field(working_dir(&c, &image()).unwrap_err()), "working_dir");
    }

    fn caps_of(spec: &Spec) -> HashSet<Capability> {
        let p = spec.process().as_ref().unwrap();
        p.capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap()
            .into_iter()
            .collect()
    }

    #[test]
    fn capabilities_in_spec() {
        let spec = build(&config()).unwrap();
        let set = caps_of(&spec);
        assert_eq!(set.len(), 14);
        assert!(set.contains(&Capability::NetRaw));
        let c = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(c.inheritable().as_ref().unwrap().is_empty());
        assert!(c.ambient().as_ref().unwrap().is_empty());

        let mut cfg = config();
        sc(&mut cfg).capabilities = Capabilities {
            add: s(&["CAP_SYS_ADMIN"]),
            drop: s(&["NET_RAW"]),
            add_ambient: vec![],
        };
        let set = caps_of(&build(&cfg).unwrap());
        assert!(set.contains(&Capability::SysAdmin));
        assert!(!set.contains(&Capability::NetRaw));

        sc(&mut cfg).capabilities = Capabilities {
            add: s(&["CAP_TELEPORT"]),
            ..Default::default()
        };
        let err = build(&cfg).unwrap_err();
        assert!(err.to_string().contains("CAP_TELEPORT"), "{err}");

        sc(&mut cfg).capabilities = Capabilities::default();
        sc(&mut cfg).privileged = true;
        assert_eq!(caps_of(&build(&cfg).unwrap()).len(), caps::ALL.len());
    }

    #[test]
    fn oom_score_adj_restricted() {
        let current = current_oom_score_adj().unwrap();
        assert_eq!(
            oom_score_adj(-1000, true).unwrap() as i64,
            current.max(-1000)
        );
        assert!(oom_score_adj(-1000, true).unwrap() as i64 >= current);
        assert_eq!(oom_score_adj(1000, true).unwrap(), 1000);
        assert_eq!(oom_score_adj(-1000, false).unwrap(), -1000);
        assert!(oom_score_adj(1001, false).is_err());
        let mut cfg = config();
        cfg.resources = Some(Resources {
            oom_score_adj: -999,
            ..Default::default()
        });
        let root = rootfs();
        let mut o = opts(root.path());
        o.restrict_oom_score_adj = true;
        let spec = container_spec(&cfg, &pod(), &image(), &o).unwrap();
        let got = spec.process().as_ref().unwrap().oom_score_adj().unwrap() as i64;
        assert_eq!(got, current.max(-999));
    }
}
