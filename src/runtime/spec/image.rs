//! The image config's defaults for a container (entrypoint, cmd, env, working dir, user,
//! stop signal), read from the OCI image config JSON.

use super::SpecError;

/// Image config fields that matter for a container (from the OCI image config JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
    /// The image's `VOLUME` paths, sorted (the Docker API gives each an anonymous
    /// volume).
    pub volumes: Vec<String>,
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigSection>,
}

#[derive(serde::Deserialize, Default)]
struct ConfigSection {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "StopSignal", default)]
    stop_signal: Option<String>,
    #[serde(rename = "Volumes", default)]
    volumes: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

impl ImageDefaults {
    /// Reads the fields from an OCI (or Docker) image config JSON document.
    pub fn from_config_json(json: &[u8]) -> Result<ImageDefaults, SpecError> {
        let file: ConfigFile =
            serde_json::from_slice(json).map_err(|e| SpecError::ImageConfig(e.to_string()))?;
        let c = file.config.unwrap_or_default();
        Ok(ImageDefaults {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::spec::test_support::*;

    #[test]
    fn image_defaults_from_json() {
        let json = br#"{"architecture":"amd64","config":{"Entrypoint":["/bin/sh","-c"],
            "Cmd":null,"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000",
            "StopSignal":"SIGTERM"},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = ImageDefaults::from_config_json(json).unwrap();
        assert_eq!(d.entrypoint, s(&["/bin/sh", "-c"]));
        assert!(d.cmd.is_empty());
        assert_eq!(d.working_dir, "/srv");
        assert_eq!(d.user, "1000:1000");
        assert_eq!(d.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(
            ImageDefaults::from_config_json(b"{}").unwrap(),
            ImageDefaults::default()
        );
        assert!(ImageDefaults::from_config_json(b"[").is_err());
    }
}
