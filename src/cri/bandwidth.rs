//! Kubernetes' traffic-shaping annotations on a pod (`kubernetes.io/ingress-bandwidth`,
//! `kubernetes.io/egress-bandwidth`), parsed here, in the CRI front end: they are a
//! Kubernetes detail, and the core takes the parsed `Bandwidth`.

use std::collections::HashMap;

use tonic::Status;

use crate::cni::Bandwidth;

/// Pod annotations kubelet sets for traffic shaping (k8s.io/kubernetes
/// pkg/util/bandwidth `ExtractPodBandwidthResources`).
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// The `bandwidth` capability arg from the pod's annotations, as containerd's
/// `toCNIBandWidth` (internal/cri/server/sandbox_run.go) makes it: each annotation is a
/// Kubernetes quantity in bits per second, rounded up to an integer, between 1k and 1P
/// (kubelet's `validateBandwidthIsReasonable`); a rate that is set gets a burst of
/// `u32::MAX` bits. `None` without either annotation.
pub(super) fn pod_bandwidth(
    annotations: &HashMap<String, String>,
) -> Result<Option<Bandwidth>, Status> {
    let rate = |key: &str| -> Result<u64, Status> {
        let Some(text) = annotations.get(key) else {
            return Ok(0);
        };
        let field = || format!("config.annotations[{key:?}]");
        let reason = match parse_quantity(text) {
            Err(why) => format!("{text:?} is not a Kubernetes quantity: {why}"),
            Ok(Quantity::Negative) => format!("{text:?} is negative"),
            Ok(Quantity::Value(v)) if v < MIN_BANDWIDTH => {
                format!("{text:?} is unreasonably small (< 1k bits per second)")
            }
            Ok(Quantity::Value(v)) if v <= MAX_BANDWIDTH => {
                // At most 1e15: fits.
                return Ok(v as u64);
            }
            Ok(_) => format!("{text:?} is unreasonably large (> 1P bits per second)"),
        };
        Err(Status::invalid_argument(format!("{}: {reason}", field())))
    };
    let ingress_rate = rate(INGRESS_BANDWIDTH)?;
    let egress_rate = rate(EGRESS_BANDWIDTH)?;
    if ingress_rate == 0 && egress_rate == 0 {
        return Ok(None);
    }
    let burst = |rate: u64| if rate > 0 { u64::from(u32::MAX) } else { 0 };
    Ok(Some(Bandwidth {
        ingress_rate,
        ingress_burst: burst(ingress_rate),
        egress_rate,
        egress_burst: burst(egress_rate),
    }))
}

const MIN_BANDWIDTH: u128 = 1_000;
const MAX_BANDWIDTH: u128 = 1_000_000_000_000_000;

/// A Kubernetes resource quantity, rounded up to an integer as `Quantity.Value()` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    Negative,
    Value(u128),
    /// Beyond u128.
    Huge,
}

/// Parses a Kubernetes resource quantity (k8s.io/apimachinery `resource.ParseQuantity`):
/// `[+-]<digits>[.<digits>]<suffix>`, the suffix one of the binary `Ki Mi Gi Ti Pi Ei`,
/// the decimal `n u m k M G T P E`, or an exponent `e<n>` / `E<n>`; nothing else (no
/// spaces, no `K`, no `b`).
fn parse_quantity(text: &str) -> std::result::Result<Quantity, String> {
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() {
        return Err("expected a number followed by an optional suffix".into());
    }
    if frac.contains('.') {
        return Err("the number has more than one decimal point".into());
    }
    let (mut exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        _ => {
            let exponent = suffix
                .strip_prefix(['e', 'E'])
                .filter(|e| {
                    let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })
                .ok_or_else(|| format!("unknown suffix {suffix:?}"))?;
            // Beyond this the value is 0 or huge either way.
            let value: i64 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
                -10_000
            } else {
                10_000
            });
            (value.clamp(-10_000, 10_000), 0)
        }
    };
    // The significant digits as an integer, scaled by 10^exp10.
    let mut digits = format!("{int}{frac}");
    exp10 -= frac.len() as i64;
    let trimmed = digits.trim_start_matches('0').len();
    digits.drain(..digits.len() - trimmed);
    while digits.ends_with('0') {
        digits.pop();
        exp10 += 1;
    }
    if digits.is_empty() {
        return Ok(Quantity::Value(0));
    }
    if negative {
        return Ok(Quantity::Negative);
    }
    // u128 holds any 38 digits; what is cut off is non-zero (trailing zeros are gone).
    let cut = digits.len().saturating_sub(38);
    digits.truncate(digits.len() - cut);
    exp10 += cut as i64;
    let mantissa: u128 = digits
        .parse()
        .map_err(|_| "the number is not decimal".to_string())?;
    let Some(mantissa) = mantissa.checked_mul(1u128 << exp2) else {
        return Ok(Quantity::Huge);
    };
    if exp10 >= 0 {
        if cut > 0 {
            return Ok(Quantity::Huge);
        }
        let value = u32::try_from(exp10)
            .ok()
            .and_then(|e| 10u128.checked_pow(e))
            .and_then(|scale| mantissa.checked_mul(scale));
        return Ok(value.map_or(Quantity::Huge, Quantity::Value));
    }
    // A fraction: round up.
    let Some(scale) = u32::try_from(-exp10)
        .ok()
        .and_then(|e| 10u128.checked_pow(e))
    else {
        // mantissa < 2^128 < 10^39 <= scale: 0 < value < 1.
        return Ok(Quantity::Value(1));
    };
    let whole = mantissa / scale;
    let round_up = mantissa % scale != 0 || cut > 0;
    Ok(Quantity::Value(whole + u128::from(round_up)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_kubernetes_rules() {
        use Quantity::*;
        for (text, want) in [
            ("1000", Value(1000)),
            ("+1000", Value(1000)),
            ("1k", Value(1000)),
            ("1M", Value(1_000_000)),
            ("10M", Value(10_000_000)),
            ("1Mi", Value(1 << 20)),
            ("10Mi", Value(10 << 20)),
            ("1Gi", Value(1 << 30)),
            ("2Ei", Value(2 << 60)),
            ("1.5M", Value(1_500_000)),
            ("1.5", Value(2)),
            ("1.", Value(1)),
            (".5k", Value(500)),
            ("0.5Ki", Value(512)),
            ("1500m", Value(2)),
            ("1m", Value(1)),
            ("1n", Value(1)),
            ("1e3", Value(1000)),
            ("1E6", Value(1_000_000)),
            ("1e+3", Value(1000)),
            ("15e-1", Value(2)),
            ("1E", Value(1_000_000_000_000_000_000)),
            ("1P", Value(1_000_000_000_000_000)),
            ("0", Value(0)),
            ("-0", Value(0)),
            ("000.000", Value(0)),
            ("-1M", Negative),
            ("1e100", Huge),
            ("99999999999999999999999999999999999999999", Huge),
            (
                "0.00000000000000000000000000000000000000000000001",
                Value(1),
            ),
            ("1e-50", Value(1)),
        ] {
            assert_eq!(parse_quantity(text), Ok(want), "{text:?}");
        }
        for bad in [
            "", " 1M", "1M ", "1K", "1 M", "1Mb", "M", ".", "1.2.3", "1e", "1e1.5", "1i", "1mi",
            "1kk", "0x10", "1_000", "ten",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} parsed");
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bandwidth_from_annotations() {
        assert_eq!(pod_bandwidth(&annotations(&[])).unwrap(), None);
        assert_eq!(
            pod_bandwidth(&annotations(&[("other", "1M")])).unwrap(),
            None
        );
        assert_eq!(
            pod_bandwidth(&annotations(&[(INGRESS_BANDWIDTH, "1M")])).unwrap(),
            Some(Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: u64::from(u32::MAX),
                egress_rate: 0,
                egress_burst: 0,
            })
        );
        assert_eq!(
            pod_bandwidth(&annotations(&[
                (INGRESS_BANDWIDTH, "10Mi"),
                (EGRESS_BANDWIDTH, "1k")
            ]))
            .unwrap(),
            Some(Bandwidth {
                ingress_rate: 10 << 20,
                ingress_burst: u64::from(u32::MAX),
                egress_rate: 1000,
                egress_burst: u64::from(u32::MAX),
            })
        );
        assert_eq!(
            pod_bandwidth(&annotations(&[(EGRESS_BANDWIDTH, "1P")]))
                .unwrap()
                .map(|b| b.egress_rate),
            Some(1_000_000_000_000_000)
        );
        for (key, value, says) in [
            (
                INGRESS_BANDWIDTH,
                "10X",
                "not a Kubernetes quantity: unknown suffix \"X\"",
            ),
            (EGRESS_BANDWIDTH, "1K", "unknown suffix \"K\""),
            (EGRESS_BANDWIDTH, "", "not a Kubernetes quantity"),
            (INGRESS_BANDWIDTH, "999", "unreasonably small"),
            (INGRESS_BANDWIDTH, "0", "unreasonably small"),
            (INGRESS_BANDWIDTH, "-1M", "negative"),
            (EGRESS_BANDWIDTH, "1001T", "unreasonably large"),
            (EGRESS_BANDWIDTH, "1e400", "unreasonably large"),
        ] {
            let err = pod_bandwidth(&annotations(&[(key, value)])).unwrap_err();
            let text = err.message().to_string();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{value:?}: {err:?}"
            );
            assert!(
                text.starts_with(&format!("config.annotations[{key:?}]: ")),
                "{text}"
            );
            assert!(text.contains(says), "{value:?}: {text}");
        }
    }
}
