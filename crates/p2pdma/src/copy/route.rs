//! Deciding how a copy travels: which p2pmem provider, whether the kernel will allow P2P
//! between it and both devices (the topology verdicts), and when to bounce through host
//! memory instead.
//!
//! Pure: it works on a [`PciTree`] and the two sides' resolved controllers, so every
//! decision is unit-tested on fixture trees.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::pci::{P2pmemInfo, PciTree};
use crate::topology::{self, Bottleneck, TopologyError, Verdict};
use crate::Bdf;

/// When to copy through host memory instead of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bounce {
    /// Only P2P: if the topology says the kernel will refuse, the copy is still tried
    /// (the kernel has the last word) and fails with the verdict attached.
    Never,
    /// P2P unless the topology verdict says it is impossible; then host memory, saying why.
    Auto,
    /// Always host memory (the baseline P2P is measured against).
    Always,
}

/// How the bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through p2pmem buffers: device to device.
    P2p,
    /// Through host-memory buffers.
    Bounce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::P2p => "p2p",
            Mode::Bounce => "bounce",
        })
    }
}

/// One side of the copy as the PCI world sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    /// "source" or "destination".
    pub role: &'static str,
    /// The path the user gave.
    pub path: PathBuf,
    /// The PCI function doing its DMA (the NVMe controller), if resolved.
    pub controller: Option<Bdf>,
    /// Why this side cannot do P2P at all (not NVMe, a filesystem without a block
    /// device, a stacked device), if so.
    pub not_p2p_because: Option<String>,
}

/// The decision.
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    /// P2P or bounce.
    pub mode: Mode,
    /// The provider whose memory carries the data (P2P only).
    pub provider: Option<Bdf>,
    /// Why that provider.
    pub provider_reason: Option<String>,
    /// Its pool as last read from sysfs.
    pub pool: Option<P2pmemInfo>,
    /// Verdicts for (provider, source controller) and (provider, destination controller).
    pub verdicts: Vec<Verdict>,
    /// Whether the verdicts say the kernel will allow P2P for both sides (`None` when not
    /// evaluated: `--bounce always`).
    pub p2p_expected: Option<bool>,
    /// The functions the data crosses, source to destination, as `role BDF` strings.
    pub path: Vec<String>,
    /// The slowest PCIe link on the path, when known.
    pub bottleneck: Option<Bottleneck>,
    /// Why the copy goes through host memory (bounce only).
    pub bounce_reason: Option<String>,
    /// Why P2P is expected to fail, with the fix (when `p2p_expected` is false).
    pub why_not: Option<String>,
}

/// Why no route could be decided.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A side cannot do P2P at all and the user asked for P2P only.
    #[error("{} ({role}) cannot take part in P2P DMA: {why}; use --bounce auto (or always) to copy through host memory", path.display())]
    SideNotP2p {
        /// "source" or "destination".
        role: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No provider exists on the system.
    #[error("no PCI device here offers p2pmem (the kernel lacks CONFIG_PCI_P2PDMA, or no NVMe has a CMB with WDS and RDS); use --bounce always, or --bounce auto")]
    NoProviders,
    /// The provider given with `--provider` has no p2pmem.
    #[error(
        "--provider {bdf} offers no p2pmem (no /sys/bus/pci/devices/{bdf}/p2pmem); pick one of: {}",
        list(available)
    )]
    NotAProvider {
        /// The address given.
        bdf: Bdf,
        /// The providers that exist.
        available: Vec<Bdf>,
    },
}

fn list(bdfs: &[Bdf]) -> String {
    if bdfs.is_empty() {
        return "none exist".to_owned();
    }
    bdfs.iter()
        .map(Bdf::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides the route of a copy between `src` and `dst`.
pub fn decide(
    tree: &PciTree,
    src: &Side,
    dst: &Side,
    bounce: Bounce,
    requested: Option<Bdf>,
) -> Result<Route, RouteError> {
    if bounce == Bounce::Always {
        return Ok(bounce_route(
            src,
            dst,
            "--bounce always".to_owned(),
            None,
            Vec::new(),
        ));
    }
    let controllers = [src, dst].map(|side| match (side.controller, &side.not_p2p_because) {
        (Some(bdf), None) => Ok(bdf),
        (_, why) => Err(RouteError::SideNotP2p {
            role: side.role,
            path: side.path.clone(),
            why: why
                .clone()
                .unwrap_or_else(|| "it is not on a PCI device".to_owned()),
        }),
    });
    let [src_ctrl, dst_ctrl] = match controllers {
        [Ok(s), Ok(d)] => [s, d],
        [Err(e), _] | [_, Err(e)] => {
            return match (bounce, e) {
                (Bounce::Auto, RouteError::SideNotP2p { role, path, why }) => Ok(bounce_route(
                    src,
                    dst,
                    format!("{} ({role}) cannot take part in P2P: {why}", path.display()),
                    None,
                    Vec::new(),
                )),
                (_, e) => Err(e),
            }
        }
    };

    let providers: Vec<Bdf> = tree.providers().map(|f| f.bdf).collect();
    let (provider, provider_reason) = match requested {
        Some(bdf) if providers.contains(&bdf) => (bdf, "chosen with --provider".to_owned()),
        Some(bdf) => {
            return Err(RouteError::NotAProvider {
                bdf,
                available: providers,
            })
        }
        None if providers.is_empty() => {
            return match bounce {
                Bounce::Auto => Ok(bounce_route(
                    src,
                    dst,
                    RouteError::NoProviders.to_string(),
                    None,
                    Vec::new(),
                )),
                _ => Err(RouteError::NoProviders),
            }
        }
        None => choose(tree, src_ctrl, dst_ctrl, &providers),
    };

    let verdicts = vec![
        topology::verdict(tree, provider, src_ctrl),
        topology::verdict(tree, provider, dst_ctrl),
    ];
    let p2p_expected = verdicts.iter().all(Verdict::is_p2p);
    let why_not = (!p2p_expected).then(|| explain_refusal(&verdicts));
    let pool = tree.function(provider).and_then(|f| f.p2pmem);
    if !p2p_expected && bounce == Bounce::Auto {
        let reason = why_not.clone().unwrap_or_default();
        return Ok(bounce_route(src, dst, reason, Some(provider), verdicts));
    }
    Ok(Route {
        mode: Mode::P2p,
        provider: Some(provider),
        provider_reason: Some(provider_reason),
        pool,
        path: p2p_path(&verdicts, provider),
        bottleneck: verdicts
            .iter()
            .filter_map(|v| v.bottleneck)
            .min_by(|a, b| a.bandwidth_gbps.total_cmp(&b.bandwidth_gbps)),
        verdicts,
        p2p_expected: Some(p2p_expected),
        bounce_reason: None,
        why_not,
    })
}

/// The destination's own memory first (its writes then never leave the device), then the
/// source's, each only if the other side can reach it; else what the kernel's
/// `pci_p2pmem_find_many()` would pick; else, so the kernel can give its answer, the
/// destination's or source's own memory or the first provider.
fn choose(tree: &PciTree, src: Bdf, dst: Bdf, providers: &[Bdf]) -> (Bdf, String) {
    let usable_by_both = |p: Bdf| {
        topology::verdict(tree, p, src).is_p2p() && topology::verdict(tree, p, dst).is_p2p()
    };
    if providers.contains(&dst) && usable_by_both(dst) {
        return (dst, "the destination's own memory (its CMB)".to_owned());
    }
    if providers.contains(&src) && usable_by_both(src) {
        return (src, "the source's own memory (its CMB)".to_owned());
    }
    match topology::choose_provider(tree, &[src, dst]) {
        Ok(choice) => (choice.provider, choice.explanation),
        Err(e) => {
            let fallback = [dst, src]
                .into_iter()
                .find(|b| providers.contains(b))
                .unwrap_or(providers[0]);
            let why = match e {
                TopologyError::NoCompatibleProvider { .. } => e.to_string(),
                other => other.to_string(),
            };
            (
                fallback,
                format!("no provider suits both devices ({why}); trying {fallback}"),
            )
        }
    }
}

fn explain_refusal(verdicts: &[Verdict]) -> String {
    verdicts
        .iter()
        .filter(|v| !v.is_p2p())
        .map(|v| {
            let reasons: Vec<String> = v
                .reasons
                .iter()
                .filter(|r| r.blocks() || v.map_type == topology::MapType::NotSupported)
                .map(ToString::to_string)
                .collect();
            format!(
                "provider {} and {}: {} ({})",
                v.provider,
                v.client,
                v.map_type,
                if reasons.is_empty() {
                    "no reason recorded".to_owned()
                } else {
                    reasons.join("; ")
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Source controller up to the common bridge, down to the provider, up again and down to
/// the destination controller.
fn p2p_path(verdicts: &[Verdict], provider: Bdf) -> Vec<String> {
    let mut path = Vec::new();
    if let [to_src, to_dst] = verdicts {
        for bdf in to_src.path.iter().rev() {
            path.push(label(*bdf, to_src.client, provider, to_dst.client));
        }
        for bdf in to_dst.path.iter().skip(1) {
            path.push(label(*bdf, to_src.client, provider, to_dst.client));
        }
    }
    path.dedup();
    path
}

fn label(bdf: Bdf, src: Bdf, provider: Bdf, dst: Bdf) -> String {
    let mut roles = Vec::new();
    if bdf == src {
        roles.push("source");
    }
    if bdf == provider {
        roles.push("provider");
    }
    if bdf == dst {
        roles.push("destination");
    }
    if roles.is_empty() {
        bdf.to_string()
    } else {
        format!("{bdf} ({})", roles.join(", "))
    }
}

fn bounce_route(
    src: &Side,
    dst: &Side,
    reason: String,
    provider_considered: Option<Bdf>,
    verdicts: Vec<Verdict>,
) -> Route {
    let name = |s: &Side| match s.controller {
        Some(b) => format!("{b} ({})", s.role),
        None => format!("{} ({})", s.path.display(), s.role),
    };
    let evaluated = !verdicts.is_empty();
    Route {
        mode: Mode::Bounce,
        provider: None,
        provider_reason: provider_considered
            .map(|p| format!("{p} was considered, but P2P through it is not possible")),
        pool: None,
        p2p_expected: evaluated.then_some(false),
        why_not: evaluated.then(|| explain_refusal(&verdicts)),
        verdicts,
        path: vec![name(src), "host memory".to_owned(), name(dst)],
        bottleneck: None,
        bounce_reason: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostFacts;
    use crate::pci::{AcsState, LinkInfo, PciFunction, PortType, CLASS_NVME};

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn function(
        at: &str,
        upstream: Option<&str>,
        port: PortType,
        p2pmem: Option<bool>,
    ) -> PciFunction {
        PciFunction {
            bdf: bdf(at),
            vendor: 0x1b36,
            device: 0x0010,
            class: if port == PortType::Endpoint {
                CLASS_NVME
            } else {
                0x060400
            },
            driver: None,
            upstream: upstream.map(bdf),
            root_bus: "pci0000:00".to_owned(),
            physfn: None,
            port_type: Some(port),
            acs: AcsState::Absent,
            link: LinkInfo::default(),
            numa_node: None,
            iommu_group: None,
            p2pmem: p2pmem.map(|published| P2pmemInfo {
                size: 16 << 20,
                available: 16 << 20,
                published,
            }),
            nvme: Vec::new(),
        }
    }

    /// q35: a root port 00:1c.0 with a switch (02:00.0 upstream, 03:0x.0 downstream)
    /// holding NVMe 04:00.0 (CMB) and 05:00.0 (CMB); NVMe 00:04.0 on the root bus (CMB);
    /// NVMe 06:00.0 without a CMB under the switch.
    fn tree() -> PciTree {
        let mut host = HostFacts::unknown("test");
        host.cpu_vendor = Some("GenuineIntel".to_owned());
        host.cpu_family = Some(6);
        host.p2pdma_config = crate::host::KernelP2pdma::Yes;
        let mut bridge = function("0000:00:00.0", None, PortType::Other(0xff), None);
        bridge.vendor = 0x8086;
        bridge.device = 0x29c0;
        bridge.class = 0x060000;
        bridge.port_type = None;
        PciTree::from_parts(
            [
                bridge,
                function("0000:00:1c.0", None, PortType::RootPort, None),
                function(
                    "0000:02:00.0",
                    Some("0000:00:1c.0"),
                    PortType::SwitchUpstream,
                    None,
                ),
                function(
                    "0000:03:00.0",
                    Some("0000:02:00.0"),
                    PortType::SwitchDownstream,
                    None,
                ),
                function(
                    "0000:03:01.0",
                    Some("0000:02:00.0"),
                    PortType::SwitchDownstream,
                    None,
                ),
                function(
                    "0000:03:02.0",
                    Some("0000:02:00.0"),
                    PortType::SwitchDownstream,
                    None,
                ),
                function(
                    "0000:04:00.0",
                    Some("0000:03:00.0"),
                    PortType::Endpoint,
                    Some(true),
                ),
                function(
                    "0000:05:00.0",
                    Some("0000:03:01.0"),
                    PortType::Endpoint,
                    Some(true),
                ),
                function(
                    "0000:06:00.0",
                    Some("0000:03:02.0"),
                    PortType::Endpoint,
                    None,
                ),
                function("0000:00:04.0", None, PortType::Endpoint, Some(true)),
            ],
            host,
        )
    }

    fn side(role: &'static str, at: &str) -> Side {
        Side {
            role,
            path: format!("/dev/{at}").into(),
            controller: Some(bdf(at)),
            not_p2p_because: None,
        }
    }

    #[test]
    fn the_destinations_own_cmb_comes_first_then_the_sources() {
        let t = tree();
        let r = decide(
            &t,
            &side("source", "0000:05:00.0"),
            &side("destination", "0000:04:00.0"),
            Bounce::Never,
            None,
        )
        .unwrap();
        assert_eq!(r.mode, Mode::P2p);
        assert_eq!(r.provider, Some(bdf("0000:04:00.0")));
        assert!(r.provider_reason.unwrap().contains("destination's own"));
        assert_eq!(r.p2p_expected, Some(true));
        assert_eq!(r.path.first().unwrap(), "0000:05:00.0 (source)");
        assert_eq!(
            r.path.last().unwrap(),
            "0000:04:00.0 (provider, destination)"
        );
        assert!(r.path.contains(&"0000:02:00.0".to_owned()), "{:?}", r.path);

        // The destination has no CMB: the source's own.
        let r = decide(
            &t,
            &side("source", "0000:05:00.0"),
            &side("destination", "0000:06:00.0"),
            Bounce::Never,
            None,
        )
        .unwrap();
        assert_eq!(r.provider, Some(bdf("0000:05:00.0")));
        assert!(r.provider_reason.unwrap().contains("source's own"));
    }

    #[test]
    fn an_unreachable_pair_bounces_under_auto_and_is_tried_under_never() {
        let t = tree();
        let src = side("source", "0000:00:04.0");
        let dst = side("destination", "0000:04:00.0");
        let auto = decide(&t, &src, &dst, Bounce::Auto, None).unwrap();
        assert_eq!(auto.mode, Mode::Bounce);
        assert_eq!(auto.p2p_expected, Some(false));
        let reason = auto.bounce_reason.unwrap();
        assert!(reason.contains("not supported"), "{reason}");

        let never = decide(&t, &src, &dst, Bounce::Never, None).unwrap();
        assert_eq!(never.mode, Mode::P2p);
        assert_eq!(never.p2p_expected, Some(false));
        assert!(never.why_not.unwrap().contains("0000:00:04.0"));
        assert!(never
            .provider_reason
            .unwrap()
            .contains("no provider suits both"));
    }

    #[test]
    fn bounce_always_and_sides_that_are_not_nvme() {
        let t = tree();
        let r = decide(
            &t,
            &side("source", "0000:05:00.0"),
            &side("destination", "0000:04:00.0"),
            Bounce::Always,
            None,
        )
        .unwrap();
        assert_eq!(r.mode, Mode::Bounce);
        assert_eq!(r.provider, None);
        assert_eq!(r.p2p_expected, None);

        let mut tmpfs = side("destination", "0000:04:00.0");
        tmpfs.controller = None;
        tmpfs.not_p2p_because = Some("a filesystem with no block device".to_owned());
        let e = decide(
            &t,
            &side("source", "0000:05:00.0"),
            &tmpfs,
            Bounce::Never,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("use --bounce auto"), "{e}");
        let r = decide(
            &t,
            &side("source", "0000:05:00.0"),
            &tmpfs,
            Bounce::Auto,
            None,
        )
        .unwrap();
        assert_eq!(r.mode, Mode::Bounce);
        assert!(r.bounce_reason.unwrap().contains("no block device"));
    }

    #[test]
    fn a_requested_provider_must_have_p2pmem() {
        let t = tree();
        let src = side("source", "0000:05:00.0");
        let dst = side("destination", "0000:06:00.0");
        let r = decide(&t, &src, &dst, Bounce::Never, Some(bdf("0000:04:00.0"))).unwrap();
        assert_eq!(r.provider, Some(bdf("0000:04:00.0")));
        let e = decide(&t, &src, &dst, Bounce::Never, Some(bdf("0000:06:00.0"))).unwrap_err();
        assert!(
            e.to_string()
                .contains("pick one of: 0000:00:04.0, 0000:04:00.0, 0000:05:00.0"),
            "{e}"
        );
    }
}
