//! One error kind for every core error: each front end maps kinds once (gRPC codes in
//! src/cri/status.rs; HTTP statuses in the Docker API), instead of matching every
//! module's variants.

/// What kind of failure an error is, as a client should read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is wrong (a field, a name, a path); retrying it cannot help.
    InvalidArgument,
    /// The object named does not exist.
    NotFound,
    /// The name or ID is taken.
    AlreadyExists,
    /// The request is understood but refused by policy (a predefined object, an
    /// overlapping address pool): dockerd's 403.
    PermissionDenied,
    /// The request is valid, but the object's state or the host cannot do it now.
    FailedPrecondition,
    /// A configured limit or a pool (addresses, subnets) is used up.
    ResourceExhausted,
    /// Something did not finish in time.
    DeadlineExceeded,
    /// A remote party (a registry) refused the credentials.
    Unauthenticated,
    /// Data does not match its digest or size.
    DataLoss,
    /// A remote party (a registry) cannot be reached; retrying may help.
    Unavailable,
    /// wharf or the host failed.
    Internal,
    /// A failure reported by an external program (a CNI plugin) that wharf cannot
    /// classify: its own message says more.
    Unknown,
}

/// An error that says what kind of failure it is.
pub trait HasKind: std::error::Error {
    fn kind(&self) -> ErrorKind;
}

impl ErrorKind {
    /// A short snake_case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::DataLoss => "data_loss",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}
