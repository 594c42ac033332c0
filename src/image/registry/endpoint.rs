//! Endpoint selection: configured mirrors in order, then the registry itself; plain
//! HTTP only for registries listed as insecure and for loopback hosts.

use std::net::IpAddr;

use oci_client::Reference;

use super::reference::DOCKER_HUB;
use super::{ImageReference, RegistryClient};

/// Where requests for a registry go: one of its mirrors or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `http://127.0.0.1:5000`: the mirror URL as configured, or the origin's.
    pub(super) url: String,
    /// `host[:port]` requests go to.
    pub(super) host: String,
    pub(super) http: bool,
    pub(super) mirror: bool,
    /// How errors name it: the registry name for the origin, the URL for a mirror.
    pub(super) name: String,
}

pub(super) fn parse_mirror(url: &str) -> Result<Endpoint, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let http = match parsed.scheme() {
        "http" => true,
        "https" => false,
        other => return Err(format!("scheme {other:?} is not http or https")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not supported".to_string());
    }
    if !matches!(parsed.path(), "" | "/" | "/v2" | "/v2/") || parsed.query().is_some() {
        return Err("a path or query other than /v2 is not supported".to_string());
    }
    let host = parsed.host_str().ok_or("no host")?;
    let host = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok(Endpoint {
        url: url
            .trim_end_matches('/')
            .trim_end_matches("/v2")
            .to_string(),
        host,
        http,
        mirror: true,
        name: url.to_string(),
    })
}

/// Registry names that mean Docker Hub, as mirror keys.
pub(super) fn mirror_key(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// `host` of `host:port` or `[v6]:port` (brackets kept).
pub(super) fn host_part(registry: &str) -> &str {
    if registry.starts_with('[') {
        match registry.find(']') {
            Some(end) => &registry[..=end],
            None => registry,
        }
    } else {
        registry.split(':').next().unwrap_or(registry)
    }
}

fn host_ip(registry: &str) -> Option<IpAddr> {
    host_part(registry)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// `addr/prefix` contains `ip`.
pub(super) fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u32>()) else {
        return false;
    };
    match (addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

impl RegistryClient {
    fn plain_http(&self, registry: &str) -> bool {
        let host = host_part(registry);
        if host == "localhost" || host_ip(registry).is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.inner.insecure.iter().any(|entry| {
            entry == registry
                || entry == host
                || host_ip(registry).is_some_and(|ip| cidr_contains(entry, ip))
        })
    }

    pub(super) fn origin(&self, reference: &ImageReference) -> Endpoint {
        let host = Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            "latest".to_string(),
        )
        .resolve_registry()
        .to_string();
        let http = self.plain_http(&reference.registry);
        Endpoint {
            url: format!("{}://{host}", if http { "http" } else { "https" }),
            host,
            http,
            mirror: false,
            name: reference.registry.clone(),
        }
    }

    /// Mirrors in order, then the registry itself.
    pub(super) fn endpoints(&self, reference: &ImageReference) -> Vec<Endpoint> {
        let mut endpoints = self
            .inner
            .mirrors
            .get(mirror_key(&reference.registry))
            .cloned()
            .unwrap_or_default();
        endpoints.push(self.origin(reference));
        endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::{client, parse};

    #[test]
    fn plain_http_only_for_insecure_and_loopback() {
        let c = client(&["reg.local:5000", "other.local", "10.1.0.0/16"], &[]);
        for (registry, http) in [
            ("localhost:5000", true),
            ("localhost", true),
            ("127.0.0.1:5000", true),
            ("127.8.9.1", true),
            ("[::1]:5000", true),
            ("reg.local:5000", true),
            ("reg.local:5001", false),
            ("other.local:443", true),
            ("10.1.2.3:5000", true),
            ("10.2.0.1:5000", false),
            ("docker.io", false),
            ("quay.io", false),
        ] {
            assert_eq!(c.plain_http(registry), http, "{registry}");
        }
        assert_eq!(c.origin(&parse("busybox")).url, "https://index.docker.io");
        assert_eq!(
            c.origin(&parse("127.0.0.1:5000/x")).url,
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn mirrors_then_origin() {
        let c = client(
            &[],
            &[(
                "docker.io",
                &[
                    "http://127.0.0.1:5001",
                    "https://mirror.example/v2/",
                    "ftp://x",
                    "https://m.example/path",
                ],
            )],
        );
        let endpoints = c.endpoints(&parse("busybox"));
        let urls: Vec<&str> = endpoints.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:5001",
                "https://mirror.example",
                "https://index.docker.io"
            ]
        );
        assert!(endpoints[0].http && endpoints[0].mirror);
        assert!(!endpoints[1].http && endpoints[1].mirror);
        assert!(!endpoints[2].mirror);
        assert_eq!(c.endpoints(&parse("quay.io/x")).len(), 1);
    }

    #[test]
    fn cidr() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cidr_contains("10.0.0.0/8", ip("10.9.9.9")));
        assert!(!cidr_contains("10.0.0.0/8", ip("11.0.0.1")));
        assert!(cidr_contains("0.0.0.0/0", ip("1.2.3.4")));
        assert!(cidr_contains("fd00::/8", ip("fd12::1")));
        assert!(!cidr_contains("fd00::/8", ip("10.0.0.1")));
        assert!(!cidr_contains("garbage", ip("10.0.0.1")));
    }
}
