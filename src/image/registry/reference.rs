//! Image references (`docker.io/library/busybox:latest`), parsed and normalized as
//! Docker does, and digest checks.

use std::fmt;
use std::str::FromStr;

use super::RegistryError;

/// A normalized image reference: `docker.io/library/busybox:latest`,
/// `127.0.0.1:5000/test/busybox@sha256:...`. Parsed as Docker does: a first path
/// component with a `.` or `:` (or `localhost`, or `[ipv6]`) is the registry, otherwise
/// the registry is `docker.io`, whose one-component names live under `library/`; no tag
/// and no digest means `latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    pub(super) registry: String,
    pub(super) repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

pub(super) const DOCKER_HUB: &str = "docker.io";

const NAME_MAX_LEN: usize = 255;

impl ImageReference {
    pub fn parse(s: &str) -> Result<ImageReference, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("the reference is empty".to_string()));
        }
        if s.len() > 4096 {
            return Err(invalid("the reference is too long".to_string()));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "the reference contains whitespace or control characters".to_string(),
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (s, None),
        };
        if let Some(digest) = digest {
            check_digest(digest).map_err(invalid)?;
        }
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag).map_err(invalid)?;
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty".to_string()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':']) || first == "localhost" || first.starts_with('[') =>
            {
                check_registry_host(first).map_err(invalid)?;
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.is_empty() {
            return Err(invalid("the repository name is empty".to_string()));
        }
        for component in path.split('/') {
            check_path_component(component).map_err(invalid)?;
        }
        if registry == DOCKER_HUB
            && !name.contains('/')
            && path.len() == 64
            && path.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(invalid(
                "a 64-character hexadecimal string is an image ID, not a repository name"
                    .to_string(),
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > NAME_MAX_LEN {
            return Err(invalid(format!(
                "the repository name is longer than {NAME_MAX_LEN} characters"
            )));
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(ImageReference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `digest`, without tag (a RepoDigest).
    pub fn with_digest(&self, digest: &str) -> ImageReference {
        ImageReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// `docker.io/library/busybox:latest` when tagged (a RepoTag).
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}/{}:{tag}", self.registry, self.repository))
    }

    /// The tag or digest a manifest request asks for (the digest when both are set).
    pub(super) fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageReference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageReference::parse(s)
    }
}

/// `sha256:<64 lowercase hex>`: digests become URLs and file names, nothing else passes.
pub(super) fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not of the form sha256:<hex>"));
    };
    if algorithm != "sha256" {
        return Err(format!(
            "digest algorithm {algorithm:?} is not supported (only sha256)"
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
        ));
    }
    Ok(())
}

pub(super) fn valid_digest(digest: &str) -> Result<(), RegistryError> {
    check_digest(digest).map_err(|reason| RegistryError::InvalidDigest {
        digest: digest.to_string(),
        reason,
    })
}

fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid: 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        ))
    }
}

pub(super) fn check_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("the repository name has an empty path component".to_string());
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "repository name must be lowercase (component {component:?})"
        ));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut ok = alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
    let mut i = 0;
    while ok && i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
    }
    if ok {
        Ok(())
    } else {
        Err(format!(
            "repository path component {component:?} is invalid: lowercase letters and digits, \
             separated by '.', '_', '__' or '-'"
        ))
    }
}

fn check_registry_host(registry: &str) -> Result<(), String> {
    let bad = || format!("registry {registry:?} is not a valid host[:port]");
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (None, None),
            _ => (None, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err() {
            return Err(bad());
        }
    }
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::{parse, HEX};

    #[test]
    fn docker_normalization() {
        let r = parse("busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.digest(), None);
        assert_eq!(
            r.repo_tag().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(parse("user/app:1.0").to_string(), "docker.io/user/app:1.0");
        assert_eq!(
            parse("index.docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            parse("docker.io/library/busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        let r = parse("localhost:5000/a/b:t");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("t"))
        );
        let r = parse("localhost/a");
        assert_eq!((r.registry(), r.repository()), ("localhost", "a"));
        let r = parse("[::1]:5000/x/y");
        assert_eq!((r.registry(), r.repository()), ("[::1]:5000", "x/y"));
        let r = parse("quay.io/coreos/etcd:v3.5.0-rc.1");
        assert_eq!(r.tag(), Some("v3.5.0-rc.1"));
        // "test.com:5000" alone is a Docker Hub image with tag 5000, as Docker has it
        assert_eq!(
            parse("test.com:5000").to_string(),
            "docker.io/library/test.com:5000"
        );
        assert_eq!(parse("a__b/c-d/e.f--g").repository(), "a__b/c-d/e.f--g");
    }

    #[test]
    fn digests() {
        let r = parse(&format!("x@sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("docker.io/library/x@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        let r = parse(&format!("reg.io:5000/x:1@sha256:{HEX}"));
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.manifest_reference(), format!("sha256:{HEX}"));
        assert_eq!(r.to_string(), format!("reg.io:5000/x:1@sha256:{HEX}"));
        let d = parse("busybox").with_digest(&format!("sha256:{HEX}"));
        assert_eq!(
            d.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
    }

    #[test]
    fn invalid_references_name_input_and_reason() {
        let cases = [
            ("", "empty"),
            ("UPPER/case", "lowercase"),
            ("Busybox", "lowercase"),
            ("a:b:c", "a:b"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("x@sha256:abc", "64"),
            ("x@md5:0123", "algorithm"),
            (&format!("x@sha256:{}", HEX.to_uppercase()), "lowercase hex"),
            ("x@", "sha256"),
            ("-x/y", "component"),
            ("x//y", "empty"),
            ("x/", "empty"),
            ("bad_host.com:99999/x", "host"),
            ("a b", "whitespace"),
            (HEX, "image ID"),
            ("x/y.", "component"),
        ];
        for (input, reason) in cases {
            match ImageReference::parse(input) {
                Err(e @ RegistryError::InvalidReference { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{input:?}")), "{input}: {msg}");
                    assert!(msg.contains(reason), "{input}: {msg} (wanted {reason:?})");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }
}
