//! API versions: the `/v1.NN` prefix is stripped before routing (and the version kept
//! in the request's extensions), one outside 1.24..=1.41 is refused with dockerd's
//! message, and every response carries dockerd's `Api-Version` and `Ostype` headers.

use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::response::Response;

use super::error::ApiError;

/// The API version served (dockerd 20.10's; docker CLI 28 and docker-py 7 negotiate
/// down to it).
pub const API_VERSION: &str = "1.41";
/// The oldest API version served (dockerd 20.10's minimum).
pub const MIN_API_VERSION: &str = "1.24";

/// Where a request with an unsupported version is routed, to be refused.
pub(super) const BAD_VERSION_ROUTE: &str = "/__wharf_unsupported_api_version/{version}";

/// The version a request asked for (the prefix), when it gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestedVersion(pub u32, pub u32);

fn parse(text: &str) -> Option<RequestedVersion> {
    let (major, minor) = text.split_once('.')?;
    Some(RequestedVersion(major.parse().ok()?, minor.parse().ok()?))
}

fn supported(version: RequestedVersion) -> bool {
    let min = parse(MIN_API_VERSION).unwrap_or(RequestedVersion(1, 24));
    let max = parse(API_VERSION).unwrap_or(RequestedVersion(1, 41));
    (min..=max).contains(&version)
}

/// Strips a `/v1.NN` prefix from the path; an unsupported version is sent to the route
/// that refuses it.
pub(super) fn strip_prefix(mut request: Request) -> Request {
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/v") else {
        return request;
    };
    let (version_text, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some(version) = parse(version_text) else {
        return request;
    };
    let new_path = if supported(version) {
        request.extensions_mut().insert(version);
        tail.to_string()
    } else {
        BAD_VERSION_ROUTE.replace("{version}", version_text)
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Ok(uri) = format!("{new_path}{query}").parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    request
}

/// dockerd's answer to a version it does not serve.
pub(super) async fn refuse(axum::extract::Path(version): axum::extract::Path<String>) -> ApiError {
    let message = match parse(&version) {
        Some(v) if v > parse(API_VERSION).unwrap_or(RequestedVersion(1, 41)) => format!(
            "client version {version} is too new. Maximum supported API version is {API_VERSION}"
        ),
        _ => format!(
            "client version {version} is too old. Minimum supported API version is \
             {MIN_API_VERSION}, please upgrade your client to a newer version"
        ),
    };
    ApiError::bad_request(message)
}

/// dockerd's headers on every response.
pub(super) async fn add_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("api-version", HeaderValue::from_static(API_VERSION));
    headers.insert("ostype", HeaderValue::from_static("linux"));
    headers.insert(
        "server",
        HeaderValue::from_static(concat!("wharf/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(uri: &str) -> (String, Option<RequestedVersion>) {
        let request = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let request = strip_prefix(request);
        (
            request.uri().to_string(),
            request.extensions().get::<RequestedVersion>().copied(),
        )
    }

    #[test]
    fn prefixes_are_stripped_and_checked() {
        assert_eq!(
            rewrite("/v1.41/containers/json?all=1"),
            (
                "/containers/json?all=1".into(),
                Some(RequestedVersion(1, 41))
            )
        );
        assert_eq!(rewrite("/v1.24/_ping").0, "/_ping");
        assert_eq!(rewrite("/containers/json").0, "/containers/json");
        assert_eq!(
            rewrite("/v1.43/version").0,
            "/__wharf_unsupported_api_version/1.43"
        );
        assert_eq!(
            rewrite("/v1.12/version").0,
            "/__wharf_unsupported_api_version/1.12"
        );
        // Not a version: left for the router (a 404).
        assert_eq!(rewrite("/volumes/x").0, "/volumes/x");
        assert_eq!(rewrite("/vx/y").0, "/vx/y");
    }
}
