//! Conformance: p2pdma's predicted verdict for every (p2pmem provider, NVMe namespace)
//! pair of a booted topology against what the kernel itself does with an O_DIRECT read
//! into the provider's memory.
//!
//! The guest runs [`GUEST_SCRIPT`]: `p2pdma topo --pairs --json` (the prediction, by the
//! rules of the guest's own kernel release), then `p2pdma probe --json` per pair (the
//! kernel's answer: `ok`, `p2p-refused`, or a read the kernel allowed whose data never
//! arrived, `dropped`/`corrupted`), the RAM providers present, and the
//! `pci=disable_acs_redir=` advice the kernel logged. [`judge`] turns that output into
//! one [`PairResult`] per pair.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The guest side of conformance; every line it prints is read by [`judge`].
/// With `RULES` set, the predictions follow that release's rules (`--kernel-release`).
pub const GUEST_SCRIPT: &str = r#"
p2pdma ${RULES:+--kernel-release $RULES} topo --pairs --json
p2pdma topo --pairs | while read p d rest; do p2pdma probe --provider $p /dev/$d --json; done
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] && echo "RAM $(basename $d)"; done
dmesg | grep -o 'pci=disable_acs_redir=[0-9a-f:.;]*' | sed 's/^/KERNEL-ACS /'
true
"#;

/// One pair as `p2pdma topo --pairs --json` predicts it.
#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    /// The p2pmem provider.
    pub provider: String,
    /// The namespace's block device name (`nvme0n1`).
    pub client_disk: String,
    /// Whether the rules allow P2P.
    pub p2p: bool,
    /// The kernel's map type the rules predict (`bus_addr`, `thru_host_bridge`, ...).
    #[serde(default)]
    pub map_type: Option<String>,
    /// The predicted distance.
    #[serde(default)]
    pub distance: Option<u32>,
    /// Functions that redirect with ACS on the path.
    #[serde(default)]
    pub acs_redirect: Vec<String>,
}

/// One `p2pdma probe --json` line: what the kernel did.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    /// The p2pmem provider.
    pub provider: String,
    /// The block device read (`/dev/nvme0n1`).
    pub client: String,
    /// `ok`, `p2p-refused`, `dropped`, `corrupted` or `error`.
    pub result: String,
    /// The errno of a failed read.
    #[serde(default)]
    pub errno: Option<i32>,
    /// The error of a failed read: `{"kind", "message", ...}` (older binaries: a string).
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

impl Probe {
    /// The error's message, if the read failed.
    pub fn error_message(&self) -> Option<String> {
        match self.error.as_ref()? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            v => Some(
                v["message"]
                    .as_str()
                    .map_or_else(|| v.to_string(), str::to_owned),
            ),
        }
    }
}

/// What the kernel did with one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelAnswer {
    /// The read completed with the device's data.
    Allowed,
    /// The kernel allowed the mapping but the data did not arrive (QEMU's emulated IOMMU
    /// does not model peer routing inside a switch).
    AllowedDataLost,
    /// The kernel refused the P2P mapping.
    Refused,
    /// The probe failed for another reason.
    Error,
}

impl KernelAnswer {
    fn from_probe(result: &str) -> KernelAnswer {
        match result {
            "ok" => KernelAnswer::Allowed,
            "dropped" | "corrupted" => KernelAnswer::AllowedDataLost,
            "p2p-refused" => KernelAnswer::Refused,
            _ => KernelAnswer::Error,
        }
    }
}

/// One pair's prediction against the kernel's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResult {
    /// The p2pmem provider (PCI address).
    pub provider: String,
    /// The namespace read (`/dev/nvme0n1`).
    pub client: String,
    /// Whether the rules predicted P2P.
    pub predicted_p2p: bool,
    /// The predicted map type.
    pub map_type: Option<String>,
    /// The predicted distance.
    pub distance: Option<u32>,
    /// What the kernel did.
    pub kernel: KernelAnswer,
    /// The probe's own word (`ok`, `p2p-refused`, `dropped`, ...).
    pub kernel_result: String,
    /// The errno of a failed read.
    pub errno: Option<i32>,
    /// The error text of a failed read.
    pub error: Option<String>,
    /// Whether prediction and kernel agree.
    pub agrees: bool,
}

impl PairResult {
    /// One line naming the pair, what the kernel did and what the rules predicted.
    pub fn describe(&self) -> String {
        let kernel = match self.kernel {
            KernelAnswer::Allowed => {
                "allowed P2P (the read completed with the device's data)".to_owned()
            }
            KernelAnswer::AllowedDataLost => format!(
                "allowed the mapping but the data did not arrive ({})",
                self.kernel_result
            ),
            KernelAnswer::Refused => format!("refused P2P{}", self.errno_text()),
            KernelAnswer::Error => format!("failed the probe{}", self.errno_text()),
        };
        let predicted = if self.predicted_p2p {
            "P2P"
        } else {
            "a refusal"
        };
        let how = match (&self.map_type, self.distance) {
            (Some(m), Some(d)) => format!(" ({m}, distance {d})"),
            (Some(m), None) => format!(" ({m})"),
            _ => String::new(),
        };
        format!(
            "{} <- {}: the kernel {kernel}; the rules predicted {predicted}{how}",
            self.provider, self.client
        )
    }

    fn errno_text(&self) -> String {
        match (self.errno, &self.error) {
            (Some(n), Some(e)) => format!(" (errno {n}: {e})"),
            (Some(n), None) => format!(" (errno {n})"),
            (None, Some(e)) => format!(" ({e})"),
            (None, None) => String::new(),
        }
    }
}

/// The kernel's `pci=disable_acs_redir=` advice and whether some pair predicted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcsAdvice {
    /// The value the kernel printed.
    pub value: String,
    /// Whether it equals the ACS list predicted for some pair.
    pub predicted: bool,
}

/// One topology's conformance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conformance {
    /// Every pair, in the order probed.
    pub pairs: Vec<PairResult>,
    /// The kernel's ACS advice.
    pub acs_advice: Vec<AcsAdvice>,
    /// Anything else that did not hold: output that would not parse, a pair predicted
    /// but not probed, a RAM provider missing.
    pub problems: Vec<String>,
}

impl Conformance {
    /// Pairs whose prediction equals the kernel's answer.
    pub fn agreeing(&self) -> usize {
        self.pairs.iter().filter(|p| p.agrees).count()
    }

    /// Whether everything agreed and nothing else went wrong.
    pub fn passed(&self) -> bool {
        !self.pairs.is_empty()
            && self.agreeing() == self.pairs.len()
            && self.acs_advice.iter().all(|a| a.predicted)
            && self.problems.is_empty()
    }
}

/// What the topology declares, for the checks of [`judge`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    /// The guest has an emulated IOMMU: an allowed read may lose its data there.
    pub iommu: bool,
    /// RAM-backed providers the topology declares.
    pub ram_providers: usize,
}

/// Judges the output of [`GUEST_SCRIPT`].
///
/// A pair agrees when the kernel allowed the mapping exactly where P2P was predicted. A
/// read the kernel allowed but whose data did not arrive counts as allowed only on a
/// topology with an emulated IOMMU; elsewhere it is a disagreement. A probe that failed
/// for another reason never agrees.
pub fn judge(stdout: &str, expect: Expect) -> Conformance {
    let mut out = Conformance::default();
    let mut predicted: BTreeMap<(String, String), Prediction> = BTreeMap::new();
    let mut probes = Vec::new();
    let mut rams = Vec::new();
    let mut kernel_acs = Vec::new();
    for line in stdout.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("KERNEL-ACS pci=disable_acs_redir=") {
            kernel_acs.push(value.to_owned());
        } else if let Some(bdf) = line.strip_prefix("RAM ") {
            rams.push(bdf.to_owned());
        } else if line.starts_with('[') {
            match serde_json::from_str::<Vec<Prediction>>(line) {
                Ok(all) => {
                    for p in all {
                        predicted
                            .insert((p.provider.clone(), format!("/dev/{}", p.client_disk)), p);
                    }
                }
                Err(e) => out
                    .problems
                    .push(format!("unreadable predictions ({e}): {line}")),
            }
        } else if line.starts_with('{') {
            match serde_json::from_str::<Probe>(line) {
                Ok(p) => probes.push(p),
                Err(e) => out.problems.push(format!("unreadable probe ({e}): {line}")),
            }
        }
    }
    if predicted.is_empty() {
        out.problems
            .push("the guest printed no predicted pairs (`p2pdma topo --pairs --json`)".into());
    }
    let mut probed = std::collections::BTreeSet::new();
    for probe in probes {
        let key = (probe.provider.clone(), probe.client.clone());
        let Some(p) = predicted.get(&key) else {
            out.problems.push(format!(
                "{} <- {}: probed but not predicted",
                probe.provider, probe.client
            ));
            continue;
        };
        probed.insert(key);
        let kernel = KernelAnswer::from_probe(&probe.result);
        let agrees = match kernel {
            KernelAnswer::Allowed => p.p2p,
            KernelAnswer::AllowedDataLost => p.p2p && expect.iommu,
            KernelAnswer::Refused => !p.p2p,
            KernelAnswer::Error => false,
        };
        let error = probe.error_message();
        out.pairs.push(PairResult {
            provider: probe.provider,
            client: probe.client,
            predicted_p2p: p.p2p,
            map_type: p.map_type.clone(),
            distance: p.distance,
            kernel,
            kernel_result: probe.result,
            errno: probe.errno,
            error,
            agrees,
        });
    }
    for (provider, client) in predicted.keys().filter(|k| !probed.contains(*k)) {
        out.problems.push(format!(
            "{provider} <- {client}: predicted but never probed"
        ));
    }
    if rams.len() != expect.ram_providers {
        out.problems.push(format!(
            "the topology declares {} RAM providers, the guest has {}",
            expect.ram_providers,
            rams.len()
        ));
    }
    let namespaces: std::collections::BTreeSet<&String> =
        predicted.keys().map(|(_, d)| d).collect();
    for ram in &rams {
        let n = predicted.keys().filter(|(p, _)| p == ram).count();
        if n != namespaces.len() {
            out.problems.push(format!(
                "RAM provider {ram} is paired with {n} of {} namespaces",
                namespaces.len()
            ));
        }
    }
    let predicted_acs: Vec<String> = predicted
        .values()
        .map(|p| p.acs_redirect.join(";"))
        .collect();
    out.acs_advice = kernel_acs
        .into_iter()
        .map(|value| AcsAdvice {
            predicted: predicted_acs.contains(&value),
            value,
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = r#"
[{"provider":"0000:03:00.0","client_disk":"nvme0n1","p2p":true,"map_type":"bus_addr","distance":0,"acs_redirect":[]},{"provider":"0000:03:00.0","client_disk":"nvme1n1","p2p":true,"map_type":"bus_addr","distance":4,"acs_redirect":[]}]
{"provider":"0000:03:00.0","client":"/dev/nvme0n1","bytes":4096,"result":"ok","errno":null,"error":null}
{"provider":"0000:03:00.0","client":"/dev/nvme1n1","bytes":4096,"result":"p2p-refused","errno":121,"error":{"kind":"p2p_refused","message":"Remote I/O error (os error 121)","exit_code":3}}
KERNEL-ACS pci=disable_acs_redir=0000:00:01.0
"#;

    #[test]
    fn a_refusal_where_p2p_was_predicted_is_a_disagreement_naming_the_pair() {
        let c = judge(SWITCH, Expect::default());
        assert_eq!((c.agreeing(), c.pairs.len()), (1, 2));
        let bad = c.pairs.iter().find(|p| !p.agrees).unwrap();
        assert_eq!(
            bad.describe(),
            "0000:03:00.0 <- /dev/nvme1n1: the kernel refused P2P (errno 121: Remote I/O error \
             (os error 121)); the rules predicted P2P (bus_addr, distance 4)"
        );
        assert_eq!(
            c.acs_advice,
            vec![AcsAdvice {
                value: "0000:00:01.0".into(),
                predicted: false
            }]
        );
        assert!(!c.passed());
    }

    #[test]
    fn agreement_on_every_pair_passes() {
        let out = SWITCH
            .replace(
                r#""result":"p2p-refused","errno":121"#,
                r#""result":"ok","errno":null"#,
            )
            .replace("KERNEL-ACS pci=disable_acs_redir=0000:00:01.0", "");
        let c = judge(&out, Expect::default());
        assert_eq!((c.agreeing(), c.pairs.len()), (2, 2));
        assert!(c.passed(), "{c:?}");
    }

    #[test]
    fn lost_data_agrees_only_behind_an_emulated_iommu() {
        let out = SWITCH.replace(r#""result":"p2p-refused""#, r#""result":"dropped""#);
        assert_eq!(judge(&out, Expect::default()).agreeing(), 1);
        let c = judge(
            &out,
            Expect {
                iommu: true,
                ram_providers: 0,
            },
        );
        assert_eq!(c.agreeing(), 2);
    }

    #[test]
    fn a_pair_never_probed_or_a_missing_ram_provider_is_a_problem() {
        let first_probe_only: String = SWITCH
            .lines()
            .filter(|l| !l.contains("nvme1n1\",\"bytes"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = judge(
            &first_probe_only,
            Expect {
                iommu: false,
                ram_providers: 1,
            },
        );
        assert_eq!(c.pairs.len(), 1);
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("/dev/nvme1n1: predicted but never probed")),
            "{:?}",
            c.problems
        );
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("declares 1 RAM providers, the guest has 0")),
            "{:?}",
            c.problems
        );
        assert!(!c.passed());
    }

    #[test]
    fn no_output_is_no_pass() {
        let c = judge("", Expect::default());
        assert!(!c.passed());
        assert_eq!(c.problems.len(), 1);
    }
}
