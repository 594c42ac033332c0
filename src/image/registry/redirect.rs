//! Redirects: GETs that follow them by hand, each hop checked (at most 5 hops, http(s)
//! only, never HTTPS to HTTP, never into another address class than the registry's
//! unless `registry.redirect_allow` says so), the registry's credentials never sent to
//! another origin; and reading a response body up to a limit.

use std::fmt;
use std::net::IpAddr;

use oci_client::secrets::RegistryAuth;
use tracing::debug;

use super::endpoint::{cidr_contains, Endpoint};
use super::error::echo;
use super::retry::Failure;
use super::{RegistryClient, RegistryError};

/// Redirects followed for one request (Go's client, and so Docker, follow 10).
const MAX_REDIRECTS: usize = 5;

impl RegistryClient {
    /// GETs `url`, following redirects by hand as [`check_redirect`] allows: so that a
    /// failure names the URL that failed (reqwest's error names the first), and `auth`
    /// goes only to the first URL's origin (scheme, host and port), never to where the
    /// registry redirects. A redirect without a `Location` comes back as the response.
    pub(super) async fn get_following(
        &self,
        http: &reqwest::Client,
        endpoint: &Endpoint,
        url: &str,
        headers: reqwest::header::HeaderMap,
        auth: &RegistryAuth,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let first = reqwest::Url::parse(url).map_err(|e| {
            Failure::fatal(RegistryError::Registry {
                registry: endpoint.name.clone(),
                message: format!("{what}: {} is not a URL: {e}", echo(url)),
            })
        })?;
        let mut current = first.clone();
        let mut chain = vec![first];
        loop {
            let mut request = http.get(current.clone()).headers(headers.clone());
            if current.origin() == chain[0].origin() {
                request = with_auth(request, auth);
            }
            // reqwest's error names the URL of this request: the one that failed.
            let response = request
                .send()
                .await
                .map_err(|e| Self::request_failure(endpoint, what, &e))?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response.headers().get(reqwest::header::LOCATION) else {
                return Ok(response);
            };
            let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
            let next = current.join(&location).map_err(|e| {
                Failure::fatal(RegistryError::Redirect {
                    url: echo(&location),
                    reason: format!("not a URL: {e}"),
                })
            })?;
            check_redirect(&chain, &next, &self.inner.redirect_allow).map_err(|reason| {
                debug!(url = %echo(next.as_str()), %reason, "refusing a redirect");
                Failure::fatal(RegistryError::Redirect {
                    url: echo(next.as_str()),
                    reason,
                })
            })?;
            debug!(from = %echo(current.as_str()), to = %echo(next.as_str()), "following a redirect");
            chain.push(next.clone());
            current = next;
        }
    }
}

/// `request` with the session's credentials.
fn with_auth(request: reqwest::RequestBuilder, auth: &RegistryAuth) -> reqwest::RequestBuilder {
    match auth {
        RegistryAuth::Anonymous => request,
        RegistryAuth::Basic(username, password) => request.basic_auth(username, Some(password)),
        RegistryAuth::Bearer(token) => request.bearer_auth(token),
    }
}

/// Where an address lies, for redirects: a registry on one class may not send wharf to
/// another (a loopback or private registry to a public address, or a public registry
/// into the node's own network) unless `registry.redirect_allow` lists the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressClass {
    Loopback,
    Private,
    Public,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::Public => "public",
        })
    }
}

fn ip_class(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                AddressClass::Loopback
            } else if v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (b & 0xc0) == 64)
            {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                AddressClass::Loopback
            } else if let Some(v4) = v6.to_ipv4_mapped() {
                ip_class(IpAddr::V4(v4))
            } else if (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
            {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
    }
}

/// The class of a URL's host. Names are judged by the name only (no lookup): `localhost`
/// is loopback, any other name public.
fn host_class(host: &str) -> AddressClass {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip_class(ip);
    }
    let lower = bare.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        AddressClass::Loopback
    } else {
        AddressClass::Public
    }
}

/// `url`'s host is listed in `registry.redirect_allow` (name, name:port, address, CIDR).
fn redirect_allowed(allow: &[String], url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip = bare.parse::<IpAddr>().ok();
    let with_port = url
        .port_or_known_default()
        .map(|port| format!("{host}:{port}"));
    allow.iter().any(|entry| {
        entry.eq_ignore_ascii_case(host)
            || entry.eq_ignore_ascii_case(bare)
            || with_port
                .as_deref()
                .is_some_and(|hp| entry.eq_ignore_ascii_case(hp))
            || ip.is_some_and(|ip| {
                entry.parse::<IpAddr>().is_ok_and(|e| e == ip) || cidr_contains(entry, ip)
            })
    })
}

/// Whether a redirect from the chain `previous` (the first is the registry's URL) to
/// `next` may be followed: at most [`MAX_REDIRECTS`] hops, http(s) only, never from
/// HTTPS down to plain HTTP, and never into another address class than the registry's
/// unless `allow` lists the target.
fn check_redirect(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    allow: &[String],
) -> Result<(), String> {
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects"));
    }
    match next.scheme() {
        "http" | "https" => {}
        other => return Err(format!("scheme {:?} is not http or https", echo(other))),
    }
    if next.scheme() == "http" && previous.iter().any(|u| u.scheme() == "https") {
        return Err("a redirect from HTTPS to plain HTTP".to_string());
    }
    let Some(host) = next.host_str() else {
        return Err("the URL has no host".to_string());
    };
    let Some(registry) = previous.first().and_then(|u| u.host_str()) else {
        return Ok(());
    };
    let (from, to) = (host_class(registry), host_class(host));
    if from != to && !redirect_allowed(allow, next) {
        return Err(format!(
            "the registry at {from} address {} may not send wharf to a {to} address \
             (registry.redirect_allow lists the exceptions)",
            echo(registry)
        ));
    }
    Ok(())
}

/// A redirect response that was not followed: one without a `Location`.
pub(super) fn unfollowed_redirect(response: &reqwest::Response) -> RegistryError {
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match location {
        Some(location) => {
            let reason = match response.url().join(&location) {
                Ok(next) if !matches!(next.scheme(), "http" | "https") => {
                    format!("scheme {:?} is not http or https", echo(next.scheme()))
                }
                Ok(_) => format!("HTTP {} not followed", response.status().as_u16()),
                Err(e) => format!("not a URL: {e}"),
            };
            RegistryError::Redirect {
                url: echo(&location),
                reason,
            }
        }
        None => RegistryError::Redirect {
            url: "(no Location header)".to_string(),
            reason: format!(
                "HTTP {} from {}",
                response.status().as_u16(),
                echo(response.url().as_str())
            ),
        },
    }
}

/// Reads at most `limit` bytes of a body; the flag tells whether it was all of it.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::registry::tests::url;

    #[test]
    fn redirect_policy_rules() {
        let allow: Vec<String> = vec!["10.1.0.0/16".into(), "minio.lan".into()];
        let check = |chain: &[&str], next: &str| {
            let chain: Vec<reqwest::Url> = chain.iter().map(|u| url(u)).collect();
            check_redirect(&chain, &url(next), &allow)
        };
        // a public registry to its CDN, https all along
        assert!(check(
            &["https://registry-1.docker.io/v2/x/blobs/sha256:a"],
            "https://production.cloudflare.docker.com/blob"
        )
        .is_ok());
        // loopback to loopback (another port), plain HTTP
        assert!(check(&["http://127.0.0.1:5000/v2/"], "http://localhost:6000/b").is_ok());
        // never down to plain HTTP, even on the same host, even a hop later
        let err = check(&["https://r.example/v2/"], "http://r.example/b").unwrap_err();
        assert!(err.contains("HTTPS to plain HTTP"), "{err}");
        assert!(check(
            &["https://r.example/v2/", "https://cdn.example/a"],
            "http://cdn.example/b"
        )
        .is_err());
        // never to another scheme
        let err = check(&["http://127.0.0.1:5000/v2/"], "file:///etc/passwd").unwrap_err();
        assert!(err.contains("\"file\""), "{err}");
        assert!(check(&["https://r.example/v2/"], "ftp://r.example/b").is_err());
        // not across address classes, either way, unless allowed
        for (from, to) in [
            ("http://127.0.0.1:5000/v2/", "http://10.255.255.1/b"),
            ("http://127.0.0.1:5000/v2/", "https://203.0.113.7/b"),
            ("http://[::1]:5000/v2/", "https://cdn.example/b"),
            ("http://10.0.0.5:5000/v2/", "https://cdn.example/b"),
            ("http://192.168.1.2/v2/", "http://127.0.0.1:80/b"),
            ("https://r.example/v2/", "https://10.0.0.1/b"),
            ("https://r.example/v2/", "https://[fd00::1]/b"),
            ("https://r.example/v2/", "https://169.254.169.254/latest"),
            ("https://r.example/v2/", "https://localhost/b"),
            ("https://r.example/v2/", "https://[::ffff:127.0.0.1]/b"),
        ] {
            let err = check(&[from], to).expect_err(to);
            assert!(err.contains("may not send wharf"), "{from} -> {to}: {err}");
        }
        assert!(check(&["https://r.example/v2/"], "https://10.1.2.3/b").is_ok());
        assert!(check(&["http://10.0.0.5:5000/v2/"], "http://minio.lan:9000/b").is_ok());
        assert!(check(&["http://10.0.0.5:5000/v2/"], "http://10.0.0.6/b").is_ok());
        // at most MAX_REDIRECTS hops
        let chain: Vec<String> = (0..=MAX_REDIRECTS)
            .map(|i| format!("https://r{i}.example/"))
            .collect();
        let refs: Vec<&str> = chain.iter().map(String::as_str).collect();
        assert!(check(&refs[..MAX_REDIRECTS], "https://last.example/").is_ok());
        let err = check(&refs, "https://last.example/").unwrap_err();
        assert!(err.contains("more than 5 redirects"), "{err}");
    }
}
