//! `probe --json`: the [`ProbeReport`] and, unless the read delivered the device's data,
//! the error object ([`probe_error`]) whose kind is the exit status. The sentence is
//! [`crate::probe::text`].

use super::error::{ErrorObject, Kind};
use crate::probe::{Outcome, ProbeReport};

/// The error object of a probe that did not find P2P working: kind `p2p_refused` when
/// the kernel refused, `failure` when the read failed otherwise or delivered nothing;
/// the reason in `message`. `None` when the device's data arrived.
pub fn probe_error(report: &ProbeReport) -> Option<ErrorObject> {
    let kind = match report.result {
        Outcome::Ok => return None,
        Outcome::P2pRefused => Kind::P2pRefused,
        Outcome::Error | Outcome::Dropped | Outcome::Corrupted => Kind::Failure,
    };
    Some(ErrorObject::new(
        kind,
        report.reason.clone().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(result: Outcome, reason: Option<&str>) -> ProbeReport {
        ProbeReport {
            provider: "0000:04:00.0".parse().unwrap(),
            client: "/dev/nvme1n1".into(),
            bytes: 4096,
            bytes_read: 0,
            result,
            pattern_seed: 0x5eed,
            pattern_replaced: None,
            matches_host_read: None,
            errno: None,
            verdict_p2p: Some(false),
            kernel_release: Some("6.12.117".into()),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn a_refusal_exits_3_other_failures_exit_1_and_success_has_no_error() {
        assert!(probe_error(&report(Outcome::Ok, None)).is_none());
        let refused = probe_error(&report(Outcome::P2pRefused, Some("EREMOTEIO"))).unwrap();
        assert_eq!(
            (refused.kind, refused.exit_code, refused.message.as_str()),
            (Kind::P2pRefused, 3, "EREMOTEIO")
        );
        for outcome in [Outcome::Error, Outcome::Dropped, Outcome::Corrupted] {
            let e = probe_error(&report(outcome, Some("why"))).unwrap();
            assert_eq!((e.kind, e.exit_code), (Kind::Failure, 1), "{outcome:?}");
        }
        let json = serde_json::to_value(crate::report::error::WithError {
            error: probe_error(&report(Outcome::P2pRefused, Some("EREMOTEIO"))),
            report: report(Outcome::P2pRefused, Some("EREMOTEIO")),
        })
        .unwrap();
        assert_eq!(json["result"], "p2p-refused");
        assert_eq!(json["error"]["kind"], "p2p_refused");
        assert!(
            json.get("reason").is_none(),
            "the reason rides in message only"
        );
    }
}
