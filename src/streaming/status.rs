//! What the error stream carries at a remote command's end, per protocol version:
//! v4 and v5 a `metav1.Status` JSON (kubectl reads the exit code from it); v1 to v3
//! only a failure's text (a success writes nothing).

use serde_json::json;

use super::session::Outcome;

/// The protocol generations, as they differ on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    /// v1 to v3: plain text, nothing on success.
    Text,
    /// v4 and v5: a metav1.Status.
    Status,
}

/// The bytes for the error stream (empty: write nothing), or None when the client is
/// gone.
pub fn error_stream_bytes(outcome: &Outcome, format: ErrorFormat) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::ClientGone => return None,
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
            "details": {"causes": [{"message": message}]},
            "code": 500,
        }),
    };
    Some(match format {
        ErrorFormat::Status => serde_json::to_vec(&status).unwrap_or_default(),
        ErrorFormat::Text => match outcome {
            Outcome::Exited(0) => Vec::new(),
            Outcome::Exited(code) => {
                format!("command terminated with non-zero exit code: exit code {code}").into_bytes()
            }
            Outcome::Failed(message) => message.clone().into_bytes(),
            Outcome::ClientGone => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code_as_kubectl_reads_it() {
        let bytes = error_stream_bytes(&Outcome::Exited(3), ErrorFormat::Status).expect("bytes");
        let status: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        let ok = error_stream_bytes(&Outcome::Exited(0), ErrorFormat::Status).expect("bytes");
        assert!(String::from_utf8_lossy(&ok).contains("Success"));
        assert_eq!(
            error_stream_bytes(&Outcome::Exited(0), ErrorFormat::Text),
            Some(Vec::new())
        );
        assert_eq!(
            error_stream_bytes(&Outcome::ClientGone, ErrorFormat::Status),
            None
        );
    }
}
