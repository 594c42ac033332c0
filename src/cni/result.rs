//! Plugin results: parsed into the spec 1.0 shape whatever version the plugin spoke,
//! with the original JSON kept for chaining and the cache.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Version;

/// An interface a plugin created or configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the sandbox; absent for host-side ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned by a plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.22.0.5/24`.
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into the result's `interfaces`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.address.split('/').next().unwrap_or_default();
        host.parse().ok()
    }
}

/// A route a plugin set up in the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

/// DNS settings: in a result, what a plugin suggests; in [`super::RuntimeConfig`], what
/// the runtime asks plugins with the `dns` capability to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The final result of an ADD, in the spec 1.0 shape.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The version the plugin answered in.
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    raw: Value,
}

/// The 0.3.0 .. 1.1.0 result body (0.3.x's per-IP `version` is ignored).
#[derive(Deserialize, Default)]
#[serde(default)]
struct CurrentBody {
    interfaces: Vec<Interface>,
    ips: Vec<IpConfig>,
    routes: Vec<Route>,
    dns: Dns,
}

/// The 0.1.0 / 0.2.0 result body.
#[derive(Deserialize, Default)]
#[serde(default)]
struct LegacyBody {
    ip4: Option<LegacyIp>,
    ip6: Option<LegacyIp>,
    dns: Dns,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LegacyIp {
    ip: String,
    gateway: Option<String>,
    routes: Vec<Route>,
}

impl CniResult {
    /// Parses a plugin's result; `config_version` is used when the result does not say
    /// its own `cniVersion` (0.1.0 results may not).
    pub fn parse(raw: Value, config_version: &str) -> Result<CniResult, String> {
        if !raw.is_object() {
            return Err("result is not a JSON object".into());
        }
        let cni_version = raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(config_version)
            .to_string();
        let version = Version::parse(&cni_version)
            .filter(|v| v.is_supported())
            .ok_or_else(|| format!("unsupported result cniVersion {cni_version:?}"))?;
        let (interfaces, ips, routes, dns) = if version < Version::V0_3_0 {
            let body: LegacyBody = serde_json::from_value(raw.clone())
                .map_err(|err| format!("invalid {cni_version} result: {err}"))?;
            let mut ips = Vec::new();
            let mut routes = Vec::new();
            for legacy in [body.ip4, body.ip6].into_iter().flatten() {
                ips.push(IpConfig {
                    address: legacy.ip,
                    gateway: legacy.gateway,
                    interface: None,
                });
                routes.extend(legacy.routes);
            }
            (Vec::new(), ips, routes, body.dns)
        } else {
            let body: CurrentBody = serde_json::from_value(raw.clone())
                .map_err(|err| format!("invalid {cni_version} result: {err}"))?;
            (body.interfaces, body.ips, body.routes, body.dns)
        };
        Ok(CniResult {
            cni_version,
            interfaces,
            ips,
            routes,
            dns,
            raw,
        })
    }

    /// The result exactly as the last plugin printed it.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The pod's addresses: those of interfaces inside the sandbox (interfaces with a
    /// `sandbox` path), IPv4 first then IPv6, each family in result order, as containerd
    /// reports pod IPs. Results without interface information (0.1.0 / 0.2.0) give all
    /// their addresses.
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let in_sandbox = |index: usize| {
            self.interfaces
                .get(index)
                .and_then(|i| i.sandbox.as_deref())
                .is_some_and(|s| !s.is_empty())
        };
        let any_sandbox = (0..self.interfaces.len()).any(in_sandbox);
        let selected: Vec<IpAddr> = self
            .ips
            .iter()
            .filter(|ip| match ip.interface {
                Some(index) => in_sandbox(index),
                None => !any_sandbox,
            })
            .filter_map(IpConfig::ip)
            .collect();
        let (mut v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
            selected.into_iter().partition(IpAddr::is_ipv4);
        v4.extend(v6);
        v4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_0_3_1_with_version_fields() {
        let raw = json!({
            "cniVersion": "0.3.1",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/x"}
            ],
            "ips": [{"version": "4", "interface": 2, "address": "10.22.0.5/16", "gateway": "10.22.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {}
        });
        let result = CniResult::parse(raw.clone(), "0.3.1").unwrap();
        assert_eq!(result.cni_version, "0.3.1");
        assert_eq!(result.interfaces.len(), 3);
        assert_eq!(
            result.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/x")
        );
        assert_eq!(
            result.ips,
            vec![IpConfig {
                address: "10.22.0.5/16".into(),
                gateway: Some("10.22.0.1".into()),
                interface: Some(2)
            }]
        );
        assert_eq!(result.routes[0].dst, "0.0.0.0/0");
        assert_eq!(
            result.pod_ips(),
            vec!["10.22.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(result.raw(), &raw);
    }

    #[test]
    fn parses_0_4_0() {
        let raw = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/proc/1/ns/net"}],
            "ips": [{"version": "6", "interface": 0, "address": "fd00::5/64"},
                    {"version": "4", "interface": 0, "address": "10.1.0.5/24"}],
            "dns": {"nameservers": ["10.1.0.1"], "domain": "example", "search": ["a"], "options": ["ndots:5"]}
        });
        let result = CniResult::parse(raw, "0.4.0").unwrap();
        assert_eq!(result.dns.nameservers, vec!["10.1.0.1"]);
        assert_eq!(result.dns.domain.as_deref(), Some("example"));
        assert_eq!(result.dns.options, vec!["ndots:5"]);
        // IPv4 first, whatever the result order.
        let ips: Vec<String> = result.pod_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.1.0.5", "fd00::5"]);
    }

    #[test]
    fn parses_1_0_0_and_skips_host_side_addresses() {
        let raw = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "mtu": 1500, "sandbox": "/run/netns/p", "pciID": "0000:00:1f.6", "socketPath": "/s"},
                {"name": "net1", "sandbox": "/run/netns/p"}
            ],
            "ips": [
                {"address": "10.9.0.1/24", "interface": 0},
                {"address": "fd00::9/64", "interface": 1, "gateway": "fd00::1"},
                {"address": "10.9.0.7/24", "interface": 1, "gateway": "10.9.0.1"},
                {"address": "10.8.0.7/24", "interface": 2},
                {"address": "10.7.0.7/24", "interface": 9},
                {"address": "10.6.0.7/24"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1", "mtu": 1400, "priority": 10, "table": 100, "scope": 0, "advmss": 1360}]
        });
        let result = CniResult::parse(raw, "1.0.0").unwrap();
        assert_eq!(result.interfaces[1].mtu, Some(1500));
        assert_eq!(result.interfaces[1].pci_id.as_deref(), Some("0000:00:1f.6"));
        assert_eq!(result.interfaces[1].socket_path.as_deref(), Some("/s"));
        assert_eq!(result.routes[0].table, Some(100));
        assert_eq!(result.routes[0].gw.as_deref(), Some("10.9.0.1"));
        let ips: Vec<String> = result.pod_ips().iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.9.0.7", "10.8.0.7", "fd00::9"]);
    }

    #[test]
    fn converts_0_2_0() {
        let raw = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "ip6": {"ip": "fd00::5/64"},
            "dns": {"nameservers": ["8.8.8.8"]}
        });
        let result = CniResult::parse(raw, "0.2.0").unwrap();
        assert_eq!(result.ips.len(), 2);
        assert_eq!(result.ips[0].gateway.as_deref(), Some("10.1.0.1"));
        assert_eq!(result.routes.len(), 1);
        assert_eq!(result.pod_ips().len(), 2);
        assert_eq!(result.dns.nameservers, vec!["8.8.8.8"]);
    }

    #[test]
    fn version_falls_back_to_the_config_and_must_be_known() {
        let result = CniResult::parse(json!({"ip4": {"ip": "10.0.0.2/8"}}), "0.1.0").unwrap();
        assert_eq!(result.cni_version, "0.1.0");
        assert_eq!(result.pod_ips().len(), 1);
        assert!(CniResult::parse(json!({"cniVersion": "7.0.0"}), "1.0.0").is_err());
        assert!(CniResult::parse(json!([1]), "1.0.0").is_err());
        assert!(CniResult::parse(json!({"cniVersion": "1.0.0", "ips": "x"}), "1.0.0").is_err());
    }
}
