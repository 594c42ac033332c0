//! Generated hostile input (issue 24), on stable Rust with proptest: the Dockerfile
//! parser and its word expansion, `.dockerignore` patterns, image references, CNI
//! results, the layer unpacker (tar streams of crafted entries: `..`, absolute names,
//! links out, whiteouts, long names, duplicates), the Docker API's request bodies and
//! query strings against a real wharfd, and CRI container configs through the spec
//! generator and the runtime's create (refused as bad input, never Internal).
//!
//! The rule for each target: no panic, no hang; the unpacker writes nothing outside
//! its destination; the API answers every request with a 2xx or a 4xx (never a 5xx,
//! never a dropped connection) and keeps serving.
//!
//! Budget: `WHARF_FUZZ_CASES` cases a target (default 256, what `./scripts/test`
//! runs); the seed is fixed (proptest's deterministic runner), so a failure replays.
//! The long form: `WHARF_FUZZ_CASES=20000 cargo test --test hostile_input_fuzz`.

mod support;

use std::io::Write as _;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use support::docker::DockerEnv;

fn cases() -> u32 {
    std::env::var("WHARF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// A runner with a fixed seed: the same cases on every run.
fn runner() -> TestRunner {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]))
}

/// Text made of the pieces parsers care about, mixed with any characters.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\\".to_string()),
        Just("\\\n".to_string()),
        Just("\n".to_string()),
        Just("$".to_string()),
        Just("${".to_string()),
        Just("}".to_string()),
        Just("${A:-".to_string()),
        Just("${A:+x}".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("`".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[\"a\", ".to_string()),
        Just("--from=".to_string()),
        Just("--chown=".to_string()),
        Just("=".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("*".to_string()),
        Just("**".to_string()),
        Just("!".to_string()),
        Just("/".to_string()),
        Just("..".to_string()),
        Just(":".to_string()),
        Just("@".to_string()),
        Just("é".to_string()),
        Just("\u{0}".to_string()),
        "[a-zA-Z0-9_.-]{0,8}",
        any::<String>(),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Dockerfile-shaped text: keywords, flags, JSON and shell forms, continuations.
fn dockerfile_text() -> impl Strategy<Value = String> {
    let keyword = prop_oneof![
        Just("FROM"),
        Just("RUN"),
        Just("CMD"),
        Just("ENTRYPOINT"),
        Just("ENV"),
        Just("ARG"),
        Just("LABEL"),
        Just("COPY"),
        Just("ADD"),
        Just("WORKDIR"),
        Just("USER"),
        Just("EXPOSE"),
        Just("VOLUME"),
        Just("SHELL"),
        Just("HEALTHCHECK"),
        Just("ONBUILD"),
        Just("STOPSIGNAL"),
        Just("MAINTAINER"),
        Just("from"),
        Just("NOPE"),
    ];
    let line = (keyword, hostile_text()).prop_map(|(k, rest)| format!("{k} {rest}"));
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

#[test]
fn dockerfile_parser_and_expansion_never_panic() {
    use wharf::image::build::dockerfile;
    use wharf::image::build::shell;
    let vars: Vec<String> = vec!["A=1".into(), "B=two words".into(), "EMPTY=".into()];
    let runs = std::cell::Cell::new(0u64);
    let strategy = prop_oneof![dockerfile_text(), hostile_text()];
    runner()
        .run(&strategy, |text| {
            runs.set(runs.get() + 1);
            if let Ok(parsed) = dockerfile::parse(&text) {
                let instructions = parsed.meta_args.iter().chain(
                    parsed
                        .stages
                        .iter()
                        .flat_map(|s| std::iter::once(&s.from).chain(s.instructions.iter())),
                );
                for instruction in instructions {
                    let _ = instruction.command(&vars, parsed.escape);
                }
            }
            let _ = shell::expand_word(&text, &vars, '\\');
            let _ = shell::expand_words(&text, &vars, '`');
            let _ = dockerfile::parse_trigger(&text);
            Ok(())
        })
        .unwrap();
    eprintln!("dockerfile: {} cases", runs.get());
}

#[test]
fn ignore_patterns_and_references_never_panic() {
    use wharf::image::build::ignore::IgnoreMatcher;
    use wharf::image::registry::ImageReference;
    let strategy = (hostile_text(), hostile_text());
    runner()
        .run(&strategy, |(patterns, path)| {
            if let Ok(matcher) = IgnoreMatcher::parse(&patterns) {
                let _ = matcher.excluded(&path);
                let _ = matcher.may_reinclude_under(&path);
            }
            let _ = ImageReference::parse(&patterns);
            let _ = ImageReference::parse(&format!("{path}:{patterns}"));
            let _ = ImageReference::parse(&format!("{path}@sha256:{patterns}"));
            Ok(())
        })
        .unwrap();
}

/// JSON values of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        hostile_text().prop_map(Value::String),
        Just(Value::String("10.1.2.3/24".into())),
        Just(Value::String("fd00::1/64".into())),
        Just(Value::String("eth0".into())),
        Just(Value::String("1.0.0".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(json_key(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Object keys: the names the parsers read, and others.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cniVersion".to_string()),
        Just("interfaces".to_string()),
        Just("ips".to_string()),
        Just("address".to_string()),
        Just("gateway".to_string()),
        Just("interface".to_string()),
        Just("routes".to_string()),
        Just("dst".to_string()),
        Just("gw".to_string()),
        Just("dns".to_string()),
        Just("nameservers".to_string()),
        Just("name".to_string()),
        Just("mac".to_string()),
        Just("sandbox".to_string()),
        "[A-Za-z]{1,10}",
    ]
}

#[test]
fn cni_results_never_panic() {
    use wharf::cni::CniResult;
    let strategy = (
        any_json(),
        prop_oneof![Just("1.0.0"), Just("0.4.0"), Just("0.3.1"), Just("x")],
    );
    runner()
        .run(&strategy, |(value, version)| {
            let _ = CniResult::parse(value, version);
            Ok(())
        })
        .unwrap();
}

/// One crafted tar entry.
#[derive(Debug, Clone)]
enum Entry {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

/// Entry names: the shapes that escape or confuse (`..`, absolute, whiteouts, long,
/// through a symlink planted before).
fn entry_name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("link".to_string()),
        Just("etc".to_string()),
        Just(".wh.a".to_string()),
        Just(".wh..wh..opq".to_string()),
        Just(".wh.".to_string()),
        Just("x".repeat(300)),
        "[a-z]{1,4}",
    ];
    (any::<bool>(), proptest::collection::vec(part, 1..5)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

/// Entries whose absolute link targets name `outside` (a directory of the test's own:
/// an unpacker that followed them on the host would write there, where the test looks,
/// instead of into the host's own directories).
fn entry(outside: String) -> impl Strategy<Value = Entry> {
    let target = prop_oneof![
        Just(outside.clone()),
        Just(format!("{outside}/..")),
        Just("..".to_string()),
        Just("../../..".to_string()),
        Just("OUTSIDE".to_string()),
        entry_name(),
    ];
    prop_oneof![
        (entry_name(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(n, d)| Entry::File(n, d)),
        entry_name().prop_map(Entry::Dir),
        (entry_name(), target.clone()).prop_map(|(n, t)| Entry::Symlink(n, t)),
        (entry_name(), target).prop_map(|(n, t)| Entry::Hardlink(n, t)),
    ]
}

/// A tar stream of `entries`, names written raw (the tar crate's builder refuses
/// `..`; a hostile registry does not).
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, link, data): (&str, tar::EntryType, Option<&str>, &[u8]) = match entry {
            Entry::File(n, d) => (n, tar::EntryType::Regular, None, d),
            Entry::Dir(n) => (n, tar::EntryType::Directory, None, &[]),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, Some(t), &[]),
            Entry::Hardlink(n, t) => (n, tar::EntryType::Link, Some(t), &[]),
        };
        header.set_entry_type(kind);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_size(data.len() as u64);
        let long = |record: &[u8], kind: u8, out: &mut Vec<u8>| {
            // A GNU long-name (L) or long-link (K) record before the entry.
            let mut ext = tar::Header::new_gnu();
            ext.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            ext.set_entry_type(tar::EntryType::new(kind));
            ext.set_size(record.len() as u64 + 1);
            ext.set_cksum();
            out.extend_from_slice(ext.as_bytes());
            let mut body = record.to_vec();
            body.push(0);
            body.resize(body.len().div_ceil(512) * 512, 0);
            out.extend_from_slice(&body);
        };
        let raw = header.as_old_mut();
        if name.len() < 100 {
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
        } else {
            long(name.as_bytes(), b'L', &mut out);
        }
        if let Some(link) = link {
            let raw = header.as_old_mut();
            if link.len() < 100 {
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            } else {
                long(link.as_bytes(), b'K', &mut out);
            }
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        let mut body = data.to_vec();
        body.resize(body.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every path under `dir` (relative), sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(base).unwrap().display().to_string());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

#[test]
fn the_unpacker_never_writes_outside_its_layer() {
    use wharf::image::unpack::{apply_layer, Compression};
    let jail = tempfile::Builder::new()
        .prefix("wharf-fuzz-unpack-")
        .tempdir()
        .expect("tempdir");
    // The layer is unpacked 12 directories down the jail (relative links chained up
    // from it stay in the jail), beside jail/OUTSIDE, which absolute links name: the
    // jail must look the same after every case.
    let outside = jail.path().join("OUTSIDE");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("canary"), "canary").unwrap();
    let deep = (1..=12).fold(jail.path().to_path_buf(), |p, i| p.join(i.to_string()));
    std::fs::create_dir_all(&deep).unwrap();
    let before = tree(jail.path());
    let case = std::cell::Cell::new(0u64);
    let strategy = proptest::collection::vec(entry(outside.display().to_string()), 1..12);
    runner()
        .run(&strategy, |entries| {
            case.set(case.get() + 1);
            let case = case.get();
            let layer = deep.join("layer");
            std::fs::create_dir(&layer).unwrap();
            let tar = tar_of(&entries);
            let _ = apply_layer(&tar[..], Compression::None, &layer);
            // Read back through the layer: nothing may point the walk outside.
            let _ = tree(&layer);
            std::fs::remove_dir_all(&layer).unwrap();
            let after = tree(jail.path());
            prop_assert_eq!(&after, &before, "case {}: {:?}", case, entries);
            prop_assert_eq!(
                std::fs::read_to_string(outside.join("canary")).unwrap(),
                "canary"
            );
            Ok(())
        })
        .unwrap();
}

/// Docker API bodies: the create fields with values of any type and shape.
fn create_body(image: String) -> impl Strategy<Value = serde_json::Value> {
    let field = prop_oneof![
        Just("Cmd"),
        Just("Entrypoint"),
        Just("Env"),
        Just("Labels"),
        Just("ExposedPorts"),
        Just("Volumes"),
        Just("Healthcheck"),
        Just("User"),
        Just("WorkingDir"),
        Just("Hostname"),
        Just("MacAddress"),
        Just("StopSignal"),
        Just("StopTimeout"),
        Just("Tty"),
        Just("OpenStdin"),
    ];
    let host_field = prop_oneof![
        Just("Binds"),
        Just("Mounts"),
        Just("Tmpfs"),
        Just("PortBindings"),
        Just("NetworkMode"),
        Just("RestartPolicy"),
        Just("Memory"),
        Just("NanoCpus"),
        Just("CpuShares"),
        Just("PidsLimit"),
        Just("CapAdd"),
        Just("CapDrop"),
        Just("SecurityOpt"),
        Just("Sysctls"),
        Just("Dns"),
        Just("ExtraHosts"),
        Just("Links"),
        Just("LogConfig"),
        Just("Devices"),
        Just("DeviceRequests"),
        Just("VolumesFrom"),
        Just("AutoRemove"),
        Just("ShmSize"),
    ];
    (
        proptest::collection::btree_map(field, any_json(), 0..4),
        proptest::collection::btree_map(host_field, any_json(), 0..4),
        any_json(),
    )
        .prop_map(move |(fields, host, networking)| {
            let mut body = serde_json::json!({ "Image": image });
            for (k, v) in fields {
                body[k] = v;
            }
            body["HostConfig"] = serde_json::Value::Object(
                host.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            );
            body["NetworkingConfig"] =
                serde_json::json!({ "EndpointsConfig": { "bridge": networking } });
            body
        })
}

/// Query strings of any text, percent-encoded.
fn query_text() -> impl Strategy<Value = String> {
    hostile_text().prop_map(|t| {
        t.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_api_answers_hostile_bodies_and_queries_with_4xx() {
    let docker = DockerEnv::start_pulled().await;
    let image = docker.image.clone();
    let socket = docker.socket();
    let check = |method: &str, path: &str, body: Option<&str>| -> Result<(), TestCaseError> {
        let (status, _, text) = support::docker::raw_http(&socket, method, path, body);
        prop_assert!(
            (200..500).contains(&status),
            "{method} {path} {body:?}: {status} {text}"
        );
        Ok(())
    };
    // Found by this test (4000 cases): a command the image lacks was a 500 at create.
    let (status, _, text) = support::docker::raw_http(
        &socket,
        "POST",
        "/containers/create",
        Some(&format!(r#"{{"Image":"{image}","Cmd":"\\"}}"#)),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not found"), "{text}");
    // Found by the CRI target: a working directory the image lacks failed the create;
    // it is made, as dockerd makes it.
    assert_eq!(
        docker.ok(&["run", "--rm", "-w", "/made/by/run", &image, "pwd"]),
        "/made/by/run"
    );
    let mut runner = runner();
    let strategy = (create_body(image.clone()), query_text(), any_json());
    let result = tokio::task::block_in_place(|| {
        runner.run(&strategy, |(body, query, other)| {
            let text = body.to_string();
            check(
                "POST",
                &format!("/containers/create?name={query}"),
                Some(&text),
            )?;
            check("POST", "/containers/create", Some(&text))?;
            check("POST", "/networks/create", Some(&other.to_string()))?;
            check("POST", "/volumes/create", Some(&other.to_string()))?;
            check("GET", &format!("/containers/json?filters={query}"), None)?;
            check(
                "GET",
                &format!("/images/json?filters={query}&all={query}"),
                None,
            )?;
            check("GET", &format!("/events?since={query}&until=1"), None)?;
            check("GET", &format!("/containers/{query}/json"), None)?;
            check(
                "POST",
                &format!("/build?t={query}&buildargs={query}"),
                Some(""),
            )?;
            Ok(())
        })
    });
    // Whatever was made by the cases that were valid goes; the daemon still serves.
    let ids = docker.ok(&["ps", "-aq"]);
    for id in ids.split_whitespace() {
        docker.ok(&["rm", "-f", id]);
    }
    docker.run(&["network", "prune", "-f"]);
    docker.run(&["volume", "prune", "-af"]);
    result.unwrap();
    assert_eq!(
        docker.ok(&["version", "--format", "{{.Server.Os}}"]),
        "linux"
    );
    let mut log = std::io::stderr();
    let _ = writeln!(log, "docker api: {} cases", cases());
}

/// CRI container configs through the spec generator and the runtime's create: the
/// fields a kubelet fills, with hostile values. Host paths stay under `dir` (a create
/// makes a missing bind source, as containerd does).
fn container_config(
    image: String,
    dir: std::path::PathBuf,
) -> impl Strategy<Value = k8s_cri::v1::ContainerConfig> {
    use k8s_cri::v1 as cri;
    let host_path = {
        let dir = dir.clone();
        prop_oneof![
            Just(dir.join("file")),
            Just(dir.join("dir")),
            "[a-z]{1,6}".prop_map(move |n| dir.join(format!("made-{n}"))),
        ]
    };
    let mount = (hostile_text(), host_path, any::<bool>(), 0..4i32).prop_map(
        |(container_path, host_path, readonly, propagation)| cri::Mount {
            container_path,
            host_path: host_path.display().to_string(),
            readonly,
            propagation,
            ..Default::default()
        },
    );
    let kv = (hostile_text(), hostile_text()).prop_map(|(key, value)| cri::KeyValue { key, value });
    let caps = proptest::collection::vec(
        prop_oneof![
            Just("NET_ADMIN".to_string()),
            Just("CAP_SYS_TIME".to_string()),
            Just("ALL".to_string()),
            hostile_text()
        ],
        0..3,
    );
    let security = (
        proptest::option::of(any::<i64>()),
        hostile_text(),
        any::<bool>(),
        caps.clone(),
        caps,
        0..3i32,
        hostile_text(),
    )
        .prop_map(
            move |(uid, username, readonly, add, drop, seccomp_type, profile)| {
                cri::LinuxContainerSecurityContext {
                    run_as_user: uid.map(|value| cri::Int64Value { value }),
                    run_as_username: username,
                    readonly_rootfs: readonly,
                    capabilities: Some(cri::Capability {
                        add_capabilities: add,
                        drop_capabilities: drop,
                        ..Default::default()
                    }),
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: seccomp_type,
                        localhost_ref: profile,
                    }),
                    ..Default::default()
                }
            },
        );
    let resources = (
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        hostile_text(),
    )
        .prop_map(
            |(period, quota, shares, memory, cpuset)| cri::LinuxContainerResources {
                cpu_period: period,
                cpu_quota: quota,
                cpu_shares: shares,
                memory_limit_in_bytes: memory,
                cpuset_cpus: cpuset,
                ..Default::default()
            },
        );
    (
        proptest::collection::vec(hostile_text(), 0..3),
        proptest::collection::vec(hostile_text(), 0..3),
        hostile_text(),
        proptest::collection::vec(kv, 0..3),
        proptest::collection::vec(mount, 0..3),
        proptest::option::of(security),
        proptest::option::of(resources),
        hostile_text(),
    )
        .prop_map(
            move |(command, args, working_dir, envs, mounts, security, resources, log_path)| {
                cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "fuzz".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    command,
                    args,
                    working_dir,
                    envs,
                    mounts,
                    log_path,
                    linux: Some(cri::LinuxContainerConfig {
                        resources,
                        security_context: security,
                    }),
                    ..Default::default()
                }
            },
        )
}

#[tokio::test(flavor = "multi_thread")]
async fn cri_container_configs_are_refused_as_bad_input_never_internal() {
    use k8s_cri::v1 as cri;
    let mut env = support::pods::PodEnv::start().await;
    let pod = env.pod_config(&support::pods::unique("fuzz"));
    let pod_id = env.run_pod(&pod).await;
    let dir = tempfile::Builder::new()
        .prefix("wharf-fuzz-cri-")
        .tempdir()
        .expect("tempdir");
    std::fs::write(dir.path().join("file"), "file").unwrap();
    std::fs::create_dir(dir.path().join("dir")).unwrap();
    let strategy = container_config(env.image.clone(), dir.path().to_path_buf());
    let handle = tokio::runtime::Handle::current();
    let mut runner = runner();
    // The runner calls a plain closure: the client is lent to it for the run.
    let shared = std::cell::RefCell::new(&mut env);
    let result = tokio::task::block_in_place(|| {
        runner
            .run(&strategy, |config| {
                let mut env = shared.borrow_mut();
                let created = handle.block_on(env.create(&pod_id, &pod, &config));
                match created {
                    Ok(id) => {
                        handle.block_on(env.remove_container(&id));
                    }
                    Err(status) => {
                        prop_assert!(
                            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
                            "{:?}: {}\n{config:?}",
                            status.code(),
                            status.message()
                        );
                    }
                }
                Ok(())
            })
            .map_err(|err| err.to_string())
    });
    let shared = shared.into_inner();
    let left = shared
        .list_containers(cri::ContainerFilter::default())
        .await;
    for container in &left {
        shared.remove_container(&container.id).await;
    }
    result.unwrap();
    shared.stop_pod(&pod_id).await;
    shared.remove_pod(&pod_id).await;
}
