//! Platforms (`linux/amd64`, `linux/arm64/v8`): parsing, the host's, and how well an
//! image's platform suits the wanted one. Its own module (and error type) so that the
//! configuration can check `registry.platform` without depending on the registry client.

use std::fmt;
use std::str::FromStr;

/// A platform string that is not `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {platform:?}: {reason}")]
pub struct PlatformError {
    platform: String,
    reason: String,
}

/// An OS/architecture(/variant) in OCI (GOOS/GOARCH) spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// This machine: `linux/amd64`, `linux/arm64/v8`, ...
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new("linux", architecture, variant)
    }

    /// `os/arch[/variant]`, or `arch` alone for Linux.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let invalid = |reason: &str| PlatformError {
            platform: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let word = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !parts.iter().all(word) {
            return Err(invalid(
                "expected os/architecture[/variant] of letters and digits",
            ));
        }
        match parts.as_slice() {
            [arch] => Ok(Platform::new("linux", arch, None)),
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(invalid("expected os/architecture[/variant]")),
        }
    }

    /// Lowercase, GOARCH names, default variants made explicit (arm64 -> v8, arm -> v7,
    /// amd64 v1 -> none), so equal platforms compare equal.
    fn normalized(&self) -> (String, String, Option<String>) {
        let os = self.os.to_ascii_lowercase();
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self
            .variant
            .as_deref()
            .map(str::to_ascii_lowercase)
            .filter(|v| !v.is_empty());
        let (arch, variant) = match arch.as_str() {
            "x86_64" | "x86-64" | "amd64" => ("amd64".to_string(), variant.filter(|v| v != "v1")),
            "aarch64" | "arm64" => (
                "arm64".to_string(),
                Some(match variant.as_deref() {
                    None | Some("8") | Some("v8") => "v8".to_string(),
                    Some(other) => other.to_string(),
                }),
            ),
            "armhf" => ("arm".to_string(), Some("v7".to_string())),
            "armel" => ("arm".to_string(), Some("v6".to_string())),
            "arm" => (
                "arm".to_string(),
                Some(match variant.as_deref() {
                    None | Some("7") | Some("v7") => "v7".to_string(),
                    Some(v) if v.len() == 1 => format!("v{v}"),
                    Some(other) => other.to_string(),
                }),
            ),
            "i386" | "i486" | "i586" | "i686" | "386" => ("386".to_string(), variant),
            _ => (arch, variant),
        };
        (os, arch, variant)
    }

    /// Whether images of this platform run on this machine (a build makes images for
    /// the machine it runs on).
    pub fn runs_here(&self) -> bool {
        Platform::host().rank(self).is_some()
    }

    /// How well an index entry for `offered` suits `self`: `Some(0)` for the same
    /// platform, `Some(n)` for an older variant this machine also runs (arm v6 on v7,
    /// amd64 v2 on v3), `None` when it does not run here.
    pub(super) fn rank(&self, offered: &Platform) -> Option<u32> {
        let (os, arch, variant) = self.normalized();
        let (offered_os, offered_arch, offered_variant) = offered.normalized();
        if os != offered_os || arch != offered_arch {
            return None;
        }
        if variant == offered_variant {
            return Some(0);
        }
        let level = |v: &Option<String>| match v {
            None => Some(1),
            Some(v) => v.strip_prefix('v').unwrap_or(v).parse::<u32>().ok(),
        };
        match (level(&variant), level(&offered_variant)) {
            (Some(wanted), Some(offered)) if offered < wanted => Some(wanted - offered),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, Platform::new("linux", "amd64", None));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, Platform::new("linux", "arm64", Some("v8")));
        }
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(Platform::parse("s390x").unwrap().to_string(), "linux/s390x");
        assert!(Platform::parse("linux//x").is_err());
        assert!(Platform::parse("a/b/c/d").is_err());

        let arm64 = Platform::new("linux", "arm64", Some("v8"));
        assert_eq!(arm64.rank(&Platform::new("linux", "arm64", None)), Some(0));
        assert_eq!(
            arm64.rank(&Platform::new("linux", "aarch64", Some("8"))),
            Some(0)
        );
        assert_eq!(arm64.rank(&Platform::new("linux", "amd64", None)), None);
        assert_eq!(arm64.rank(&Platform::new("windows", "arm64", None)), None);
        let armv7 = Platform::new("linux", "arm", None);
        assert_eq!(
            armv7.rank(&Platform::new("linux", "arm", Some("v7"))),
            Some(0)
        );
        assert_eq!(
            armv7.rank(&Platform::new("linux", "arm", Some("v6"))),
            Some(1)
        );
        assert_eq!(armv7.rank(&Platform::new("linux", "arm", Some("v8"))), None);
        let amd64 = Platform::new("linux", "amd64", None);
        assert_eq!(
            amd64.rank(&Platform::new("linux", "x86_64", Some("v1"))),
            Some(0)
        );
        assert_eq!(
            amd64.rank(&Platform::new("linux", "amd64", Some("v3"))),
            None
        );
    }
}
