//! Core errors to HTTP statuses: the one place this mapping lives, as status.rs is for
//! the CRI. The body is dockerd's `{"message": "..."}`, which clients print as is.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::{ErrorKind, HasKind};

/// Longest message sent (input echoed in errors is bounded where it is taken).
const MAX_MESSAGE: usize = 4096;

/// An API error: a status and dockerd-style message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// The HTTP status of each kind of failure (dockerd's errdefs mapping).
pub fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::ResourceExhausted
        | ErrorKind::DeadlineExceeded
        | ErrorKind::DataLoss
        | ErrorKind::Internal
        | ErrorKind::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            message = crate::image::bounded(&message, MAX_MESSAGE);
        }
        ApiError { status, message }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Any core error: its kind's status and its message.
    pub fn from_error(err: &impl HasKind) -> ApiError {
        ApiError::new(status(err.kind()), err.to_string())
    }

    /// dockerd's "No such container: X".
    pub fn no_such_container(query: &str) -> ApiError {
        ApiError::not_found(format!(
            "No such container: {}",
            crate::image::bounded(query, crate::image::MAX_ECHO)
        ))
    }

    /// dockerd's "No such image: X".
    pub fn no_such_image(query: &str) -> ApiError {
        ApiError::not_found(format!(
            "No such image: {}",
            crate::image::bounded(query, crate::image::MAX_ECHO)
        ))
    }
}

impl From<crate::runtime::RuntimeError> for ApiError {
    fn from(err: crate::runtime::RuntimeError) -> ApiError {
        match err {
            crate::runtime::RuntimeError::ImageNotPulled(image) => ApiError::no_such_image(&image),
            other => ApiError::from_error(&other),
        }
    }
}

impl From<crate::image::ImageError> for ApiError {
    fn from(err: crate::image::ImageError) -> ApiError {
        ApiError::from_error(&err)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "message": self.message })),
        )
            .into_response()
    }
}

/// dockerd's 404 for a path it does not serve.
pub(super) async fn no_such_endpoint(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "page not found: {}",
        crate::image::bounded(uri.path(), crate::image::MAX_ECHO)
    ))
}

/// A JSON body, or dockerd's 400 naming what was wrong with it.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty: a JSON object is required",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON in the request body: {err}")))?;
    decode_json(value, "request body")
}

/// `value` as a `T`, the way dockerd's Go decoder reads it, or a 400 naming the field:
/// a `null` member is no value (Go leaves the field at its zero value), which clients
/// built on Go structs send for every unset pointer (docker-compose sends
/// `"MemorySwappiness": null` and the like).
pub(super) fn decode_json<T: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
    what: &str,
) -> Result<T, ApiError> {
    drop_null_members(&mut value);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let cause = err.into_inner();
        if path == "." {
            ApiError::bad_request(format!("invalid {what}: {cause}"))
        } else {
            ApiError::bad_request(format!("invalid {what}: {path}: {cause}"))
        }
    })
}

/// Fields of Docker's API types that are Go maps: a `null` entry there is a key with an
/// empty value (`{"70000/tcp": null}` is a port binding to refuse), not an absent field.
const MAP_FIELDS: &[&str] = &[
    "PortBindings",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "Tmpfs",
    "Sysctls",
    "StorageOpt",
    "DriverOpts",
    "Options",
    "EndpointsConfig",
    "Config",
];

fn drop_null_members(value: &mut serde_json::Value) {
    drop_nulls_in(value, false);
}

fn drop_nulls_in(value: &mut serde_json::Value, is_map: bool) {
    match value {
        serde_json::Value::Object(members) => {
            if !is_map {
                members.retain(|_, member| !member.is_null());
            }
            for (key, member) in members.iter_mut() {
                drop_nulls_in(member, !is_map && MAP_FIELDS.contains(&key.as_str()));
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| drop_nulls_in(i, false)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_dockerd_statuses() {
        assert_eq!(status(ErrorKind::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(status(ErrorKind::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(status(ErrorKind::InvalidArgument), StatusCode::BAD_REQUEST);
        let long = ApiError::bad_request("x".repeat(10_000));
        assert!(long.message.len() <= MAX_MESSAGE + 64);
        let bad: Result<serde_json::Value, _> = parse_json(b"{nope");
        assert_eq!(bad.unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn nulls_are_no_value_and_type_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "PascalCase", default)]
        #[derive(Default)]
        struct Host {
            memory: i64,
            binds: Vec<String>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "PascalCase")]
        struct Create {
            host_config: Host,
        }
        let ok: Create =
            parse_json(br#"{"HostConfig": {"Memory": null, "Binds": ["/a:/b"]}}"#).unwrap();
        // A map's null entry is a key: kept for the endpoint to judge.
        let raw: serde_json::Value =
            parse_json(br#"{"HostConfig": {"PortBindings": {"70000/tcp": null}}}"#).unwrap();
        assert!(raw["HostConfig"]["PortBindings"]
            .as_object()
            .unwrap()
            .contains_key("70000/tcp"));
        assert_eq!(ok.host_config.memory, 0);
        assert_eq!(ok.host_config.binds, ["/a:/b"]);
        let bad = parse_json::<Create>(br#"{"HostConfig": {"Memory": "lots"}}"#).unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(
            bad.message
                .contains("HostConfig.Memory: invalid type: string"),
            "{}",
            bad.message
        );
    }
}
