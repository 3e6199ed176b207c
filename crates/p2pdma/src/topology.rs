//! The kernel's P2P rules: map type, distance, path, reasons and provider choice.
//!
//! This is `calc_map_type_and_dist()`, `host_bridge_whitelist()`,
//! `pci_p2pdma_distance_many()` and `pci_p2pmem_find_many()` of Linux
//! `drivers/pci/p2pdma.c`, run on a [`PciTree`] instead of live `struct pci_dev`s, with the
//! whitelist of the release the tree's host facts name ([`crate::kernel_rules`]):
//!
//! 1. Walk up from the provider (`pci_upstream_bridge()`, which for a VF starts at its
//!    PF's bridge). For each function on the way, note it if its ACS Control has RR, CR
//!    or EC set, then look for it on the client's chain. The first hit is the common
//!    upstream bridge; the client's functions below it are checked for ACS too (the
//!    common bridge itself is checked once, from the provider side; functions above it
//!    never count). Distance = steps up from the provider + steps up from the client.
//! 2. Common bridge and no redirect: [`MapType::BusAddr`].
//! 3. Otherwise the traffic goes through the root complex: [`MapType::ThruHostBridge`]
//!    if the CPU is AMD family 0x17 or newer, or the host bridge is on the whitelist;
//!    else [`MapType::NotSupported`].
//!
//! On top of that, a userspace O_DIRECT transfer into p2pmem also fails when the
//! provider has no p2pmem (`pci_p2pdma_map_type()` checks `provider->p2pdma`) or the
//! kernel lacks `CONFIG_PCI_P2PDMA`; [`verdict`] reports those too.
//!
//! # References
//! - Linux v6.12 and v7.2 `drivers/pci/p2pdma.c`; `include/linux/pci.h` (`pci_upstream_bridge`)

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::host::KernelP2pdma;
use crate::kernel_rules::RuleChoice;
use crate::pci::{Link, PciTree};
use crate::Bdf;

/// How the kernel maps a provider's memory for a client (`enum pci_p2pdma_map_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapType {
    /// Direct: the switch routes the TLPs by bus address (`PCI_P2PDMA_MAP_BUS_ADDR`).
    BusAddr,
    /// Through the root complex (`PCI_P2PDMA_MAP_THRU_HOST_BRIDGE`).
    ThruHostBridge,
    /// The kernel refuses (`PCI_P2PDMA_MAP_NOT_SUPPORTED`): the I/O fails.
    NotSupported,
}

impl MapType {
    /// The kernel's name for it.
    pub fn kernel_name(self) -> &'static str {
        match self {
            MapType::BusAddr => "PCI_P2PDMA_MAP_BUS_ADDR",
            MapType::ThruHostBridge => "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE",
            MapType::NotSupported => "PCI_P2PDMA_MAP_NOT_SUPPORTED",
        }
    }
}

impl fmt::Display for MapType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapType::BusAddr => "direct (bus address)",
            MapType::ThruHostBridge => "through the host bridge",
            MapType::NotSupported => "not supported",
        })
    }
}

/// A host bridge as the whitelist sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostBridgeId {
    /// The root bus (`pci0000:00`).
    pub root_bus: String,
    /// The device standing for it (`pci_host_bridge_dev()`), if any.
    pub device: Option<Bdf>,
    /// Its vendor:device IDs.
    pub ids: Option<(u16, u16)>,
}

impl fmt::Display for HostBridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.device, self.ids) {
            (Some(d), Some((v, id))) => write!(f, "{} ({d}, {v:04x}:{id:04x})", self.root_bus),
            _ => write!(
                f,
                "{} (no devfn 00.0 or root port first on its bus)",
                self.root_bus
            ),
        }
    }
}

/// Why a verdict is what it is, with the fix where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Provider and client are one function (distance 0).
    SameFunction,
    /// Ports on the path have ACS redirect set, so traffic goes up to the root complex.
    AcsRedirect {
        /// The functions, in the kernel's order (provider side upward, then client side).
        functions: Vec<Bdf>,
    },
    /// The ACS state of functions on the path could not be read; the verdict assumes
    /// they do not redirect.
    AcsUnknown {
        /// The functions.
        functions: Vec<Bdf>,
    },
    /// The two functions share no upstream bridge (different root ports or root buses).
    NoCommonUpstreamBridge,
    /// Through-host-bridge traffic is allowed because the CPU is AMD Zen or newer.
    CpuAllowsHostBridge {
        /// `AuthenticAMD family 0x19`.
        cpu: String,
    },
    /// Through-host-bridge traffic is allowed because the host bridge is whitelisted.
    HostBridgeWhitelisted {
        /// The host bridge(s).
        host_bridges: Vec<HostBridgeId>,
    },
    /// Through-host-bridge traffic is refused: CPU not AMD Zen, host bridge not whitelisted.
    HostBridgeNotWhitelisted {
        /// The host bridge(s) of provider and client.
        host_bridges: Vec<HostBridgeId>,
        /// The CPU as known.
        cpu: String,
        /// The ACS redirect list, if ACS is why the traffic goes up (the fix then).
        acs_redirect: Vec<Bdf>,
    },
    /// The CPU vendor/family is unknown (a snapshot without host facts): assumed not AMD.
    CpuUnknown,
    /// A function is not in the tree.
    UnknownFunction {
        /// The address.
        bdf: Bdf,
    },
    /// The provider has no p2pmem: it is not a P2P memory provider.
    ProviderHasNoP2pmem {
        /// The provider.
        bdf: Bdf,
    },
    /// The provider's pool is not published: userspace mmap still works, but in-kernel
    /// users (`pci_p2pmem_find_many`, nvmet) will not pick it.
    ProviderNotPublished {
        /// The provider.
        bdf: Bdf,
    },
    /// The kernel was built without `CONFIG_PCI_P2PDMA`.
    KernelWithoutP2pdma {
        /// How that was decided.
        source: String,
    },
    /// Whether the kernel has `CONFIG_PCI_P2PDMA` is unknown.
    KernelP2pdmaUnknown {
        /// Why.
        source: String,
    },
}

impl Reason {
    /// Whether this reason alone makes the transfer fail.
    pub fn blocks(&self) -> bool {
        matches!(
            self,
            Reason::HostBridgeNotWhitelisted { .. }
                | Reason::UnknownFunction { .. }
                | Reason::ProviderHasNoP2pmem { .. }
                | Reason::KernelWithoutP2pdma { .. }
        )
    }
}

fn bdf_list(list: &[Bdf]) -> String {
    list.iter()
        .map(Bdf::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::SameFunction => write!(f, "provider and client are the same function (distance 0)"),
            Reason::AcsRedirect { functions } => write!(
                f,
                "ACS redirect (RR/CR/EC) is set on {} so the traffic is sent up to the root complex; \
                 fix: add the kernel parameter pci=disable_acs_redir={}",
                functions.iter().map(Bdf::to_string).collect::<Vec<_>>().join(", "),
                bdf_list(functions)
            ),
            Reason::AcsUnknown { functions } => write!(
                f,
                "ACS state of {} is unknown (config space beyond 64 bytes needs root); assumed not redirecting: run as root for a certain verdict",
                functions.iter().map(Bdf::to_string).collect::<Vec<_>>().join(", ")
            ),
            Reason::NoCommonUpstreamBridge => write!(
                f,
                "no common upstream bridge: the traffic must cross the root complex"
            ),
            Reason::CpuAllowsHostBridge { cpu } => write!(
                f,
                "the root complex forwards it: {cpu} (AMD family 0x17 or newer) supports P2P through the host bridge"
            ),
            Reason::HostBridgeWhitelisted { host_bridges } => write!(
                f,
                "the root complex forwards it: host bridge {} is on the kernel's P2PDMA whitelist",
                host_bridges.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")
            ),
            Reason::HostBridgeNotWhitelisted { host_bridges, cpu, acs_redirect } => {
                write!(
                    f,
                    "the kernel refuses: host bridge {} is not on its P2PDMA whitelist and the CPU ({cpu}) is not AMD family 0x17 or newer; fix: ",
                    host_bridges.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
                )?;
                if acs_redirect.is_empty() {
                    write!(f, "put both devices below one PCIe switch (or one root port)")
                } else {
                    write!(
                        f,
                        "add the kernel parameter pci=disable_acs_redir={}",
                        bdf_list(acs_redirect)
                    )
                }
            }
            Reason::CpuUnknown => write!(
                f,
                "CPU vendor/family unknown (no host facts in this sysfs root): assumed not AMD; take snapshots with `p2pdma snapshot`"
            ),
            Reason::UnknownFunction { bdf } => write!(
                f,
                "{bdf} is not a PCI function in this tree: check the address with `p2pdma topo`"
            ),
            Reason::ProviderHasNoP2pmem { bdf } => write!(
                f,
                "{bdf} has no p2pmem (no /sys/bus/pci/devices/{bdf}/p2pmem): it provides no P2P memory; \
                 choose a provider marked [p2pmem] in `p2pdma topo` (an NVMe needs a CMB with WDS and RDS)"
            ),
            Reason::ProviderNotPublished { bdf } => write!(
                f,
                "{bdf}'s p2pmem is not published: userspace mapping works, in-kernel users (nvmet) will not pick it"
            ),
            Reason::KernelWithoutP2pdma { source } => write!(
                f,
                "the kernel was built without CONFIG_PCI_P2PDMA ({source}): use a kernel with it (Linux >= 6.2 for userspace P2P)"
            ),
            Reason::KernelP2pdmaUnknown { source } => write!(
                f,
                "cannot tell whether the kernel has CONFIG_PCI_P2PDMA ({source})"
            ),
        }
    }
}

/// The slowest link on a path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bottleneck {
    /// The function whose upstream link it is.
    pub below: Bdf,
    /// Speed and width.
    pub link: Link,
    /// Bandwidth per direction in GB/s after line encoding.
    pub bandwidth_gbps: f64,
}

/// What the kernel will do for one (provider, client) pair, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The p2pmem provider.
    pub provider: Bdf,
    /// The device doing the DMA.
    pub client: Bdf,
    /// What the transfer gets: the topology's map type, or `NotSupported` when a blocking
    /// reason (no p2pmem, kernel without P2PDMA, unknown function) stops it anyway.
    pub map_type: MapType,
    /// What `calc_map_type_and_dist()` alone returns for the pair.
    pub topology_map_type: MapType,
    /// The kernel's distance (`None` if a function is missing).
    pub distance: Option<u32>,
    /// Functions from the provider up to the common bridge (or root bus) and down to
    /// the client.
    pub path: Vec<Bdf>,
    /// The common upstream bridge, if there is one.
    pub common_upstream: Option<Bdf>,
    /// Why, including what to do.
    pub reasons: Vec<Reason>,
    /// The path's slowest link, when link facts are known.
    pub bottleneck: Option<Bottleneck>,
    /// The kernel rules applied ("Linux 7.2 rules (kernel 7.2.13)").
    pub rules: String,
}

impl Verdict {
    /// Whether the kernel will let the client DMA into the provider's memory.
    pub fn is_p2p(&self) -> bool {
        self.map_type != MapType::NotSupported && !self.reasons.iter().any(Reason::blocks)
    }

    /// Whether the data moves without touching the root complex.
    pub fn is_direct(&self) -> bool {
        self.is_p2p() && self.map_type == MapType::BusAddr
    }

    /// Whether the verdict rests on facts that could not be read (ACS, CPU, kernel config).
    pub fn is_uncertain(&self) -> bool {
        self.reasons.iter().any(|r| {
            matches!(
                r,
                Reason::AcsUnknown { .. } | Reason::CpuUnknown | Reason::KernelP2pdmaUnknown { .. }
            )
        })
    }
}

/// The core of `calc_map_type_and_dist()` on two upward chains (each starting at the
/// function itself), with `redirects(f)` answering `pci_bridge_has_acs_redir(f)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Walk {
    /// Index in the provider chain and in the client chain of the common bridge.
    common: Option<(usize, usize)>,
    distance: u32,
    acs_redirect: Vec<usize>,
}

/// Outcome of the topology part of the rules (no p2pmem/kernel checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairMap {
    map_type: MapType,
    distance: u32,
    acs_redirect: bool,
}

/// A [`PciTree`] with chains precomputed, for many verdicts (matrices, provider choice).
#[derive(Debug)]
pub struct Topology<'a> {
    tree: &'a PciTree,
    index: HashMap<Bdf, usize>,
    bdfs: Vec<Bdf>,
    chains: Vec<Vec<u32>>,
    redirects: Vec<Option<bool>>,
    root_bus: Vec<u32>,
    /// Per root bus: whitelist entry of its host bridge (`Some(requires_same)`) or `None`.
    whitelist: Vec<Option<bool>>,
    cpu_supports: bool,
    rules: RuleChoice,
}

impl<'a> Topology<'a> {
    /// Indexes `tree`, judged by the rules of the kernel release in its host facts.
    pub fn new(tree: &'a PciTree) -> Self {
        Self::with_rules(
            tree,
            RuleChoice::for_release(tree.host.kernel_release.as_deref()),
        )
    }

    /// Indexes `tree`, judged by `rules` ("what would that kernel do on this machine").
    pub fn with_rules(tree: &'a PciTree, rules: RuleChoice) -> Self {
        let bdfs: Vec<Bdf> = tree.functions.keys().copied().collect();
        let index: HashMap<Bdf, usize> = bdfs.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        let chains = bdfs
            .iter()
            .map(|b| {
                tree.chain(*b)
                    .into_iter()
                    .filter_map(|c| index.get(&c).map(|i| *i as u32))
                    .collect()
            })
            .collect();
        let redirects = tree.iter().map(|f| f.acs.redirects()).collect();
        let mut bus_names: Vec<String> = Vec::new();
        let root_bus = tree
            .iter()
            .map(|f| {
                let pos = bus_names.iter().position(|n| *n == f.root_bus);
                pos.unwrap_or_else(|| {
                    bus_names.push(f.root_bus.clone());
                    bus_names.len() - 1
                }) as u32
            })
            .collect();
        let whitelist = bus_names
            .iter()
            .map(|name| {
                let dev = tree.host_bridge_device(name)?;
                rules.rules.whitelist_entry(dev.vendor, dev.device)
            })
            .collect();
        Topology {
            tree,
            index,
            bdfs,
            chains,
            redirects,
            root_bus,
            whitelist,
            cpu_supports: tree.host.cpu_supports_p2pdma().unwrap_or(false),
            rules,
        }
    }

    /// The kernel rules the verdicts follow.
    pub fn rules(&self) -> &RuleChoice {
        &self.rules
    }

    /// The tree.
    pub fn tree(&self) -> &'a PciTree {
        self.tree
    }

    fn walk(&self, a: usize, b: usize) -> Walk {
        let a_chain = &self.chains[a];
        let b_chain = &self.chains[b];
        let mut acs_redirect = Vec::new();
        for (i, &up_a) in a_chain.iter().enumerate() {
            if self.redirects[up_a as usize] == Some(true) {
                acs_redirect.push(up_a as usize);
            }
            // Chains end on a root bus, so a common function sits at the same height
            // above the root in both: one comparison instead of a search.
            let height = a_chain.len() - 1 - i;
            let j = (b_chain.len() - 1).checked_sub(height);
            if let Some(j) = j.filter(|&j| b_chain[j] == up_a) {
                for &up_b in &b_chain[..j] {
                    if self.redirects[up_b as usize] == Some(true) {
                        acs_redirect.push(up_b as usize);
                    }
                }
                return Walk {
                    common: Some((i, j)),
                    distance: (i + j) as u32,
                    acs_redirect,
                };
            }
        }
        Walk {
            common: None,
            distance: (a_chain.len() + b_chain.len()) as u32,
            // The kernel collects these but only reports them when a common bridge exists.
            acs_redirect: Vec::new(),
        }
    }

    /// `host_bridge_whitelist(a, b)`.
    fn host_bridge_whitelisted(&self, a: usize, b: usize) -> bool {
        let (ha, hb) = (self.root_bus[a] as usize, self.root_bus[b] as usize);
        if ha == hb {
            return self.whitelist[ha].is_some();
        }
        self.whitelist[ha] == Some(false) && self.whitelist[hb] == Some(false)
    }

    /// [`Self::walk`] without collecting the ACS list: for matrices, no allocation.
    fn walk_counts(&self, a: usize, b: usize) -> (bool, u32, bool) {
        let a_chain = &self.chains[a];
        let b_chain = &self.chains[b];
        // Chains sharing any function share their top one: different tops, no common
        // bridge, decided in one comparison (most pairs of a big tree).
        if a_chain.last() != b_chain.last() {
            return (false, (a_chain.len() + b_chain.len()) as u32, false);
        }
        let mut acs = false;
        for (i, &up_a) in a_chain.iter().enumerate() {
            acs |= self.redirects[up_a as usize] == Some(true);
            let height = a_chain.len() - 1 - i;
            let j = (b_chain.len() - 1).checked_sub(height);
            if let Some(j) = j.filter(|&j| b_chain[j] == up_a) {
                acs |= b_chain[..j]
                    .iter()
                    .any(|&up_b| self.redirects[up_b as usize] == Some(true));
                return (true, (i + j) as u32, acs);
            }
        }
        (false, (a_chain.len() + b_chain.len()) as u32, false)
    }

    /// The end of calc_map_type_and_dist(): direct when the two share an upstream bridge
    /// and nothing on the path redirects, else through the host bridge if the CPU or the
    /// host bridge allows it, else refused.
    fn decide_map_type(&self, a: usize, b: usize, common: bool, acs_redirect: bool) -> MapType {
        if common && !acs_redirect {
            MapType::BusAddr
        } else if self.cpu_supports || self.host_bridge_whitelisted(a, b) {
            MapType::ThruHostBridge
        } else {
            MapType::NotSupported
        }
    }

    fn pair_map_fast(&self, a: usize, b: usize) -> PairMap {
        let (common, distance, acs_redirect) = self.walk_counts(a, b);
        let map_type = self.decide_map_type(a, b, common, acs_redirect);
        PairMap {
            map_type,
            distance,
            acs_redirect,
        }
    }

    fn pair_map(&self, a: usize, b: usize) -> (PairMap, Walk) {
        let walk = self.walk(a, b);
        let acs_redirect = !walk.acs_redirect.is_empty();
        let map_type = self.decide_map_type(a, b, walk.common.is_some(), acs_redirect);
        (
            PairMap {
                map_type,
                distance: walk.distance,
                acs_redirect,
            },
            walk,
        )
    }

    /// Map type and distance by the topology rules alone (what `calc_map_type_and_dist`
    /// returns), or `None` if either function is unknown.
    pub fn map_type(&self, provider: Bdf, client: Bdf) -> Option<(MapType, u32, bool)> {
        let a = *self.index.get(&provider)?;
        let b = *self.index.get(&client)?;
        let m = self.pair_map_fast(a, b);
        Some((m.map_type, m.distance, m.acs_redirect))
    }

    /// The full verdict for one pair.
    pub fn verdict(&self, provider: Bdf, client: Bdf) -> Verdict {
        let mut v = Verdict {
            provider,
            client,
            map_type: MapType::NotSupported,
            topology_map_type: MapType::NotSupported,
            distance: None,
            path: Vec::new(),
            common_upstream: None,
            reasons: Vec::new(),
            bottleneck: None,
            rules: self.rules.to_string(),
        };
        let (a, b) = match (self.index.get(&provider), self.index.get(&client)) {
            (Some(a), Some(b)) => (*a, *b),
            (a, _) => {
                let bdf = if a.is_none() { provider } else { client };
                v.reasons.push(Reason::UnknownFunction { bdf });
                return v;
            }
        };
        let (pair, walk) = self.pair_map(a, b);
        v.map_type = pair.map_type;
        v.topology_map_type = pair.map_type;
        v.distance = Some(pair.distance);
        let a_chain = &self.chains[a];
        let b_chain = &self.chains[b];
        let (a_end, b_end) = match walk.common {
            Some((i, j)) => (i + 1, j),
            None => (a_chain.len(), b_chain.len()),
        };
        v.path = a_chain[..a_end]
            .iter()
            .chain(b_chain[..b_end].iter().rev())
            .map(|i| self.bdfs[*i as usize])
            .collect();
        v.common_upstream = walk.common.map(|(i, _)| self.bdfs[a_chain[i] as usize]);
        if provider == client {
            v.reasons.push(Reason::SameFunction);
        }

        // Facts we could not read on the nodes whose ACS the kernel would check.
        let checked = match walk.common {
            Some((i, j)) => a_chain[..=i]
                .iter()
                .chain(&b_chain[..j])
                .copied()
                .collect::<Vec<_>>(),
            None => Vec::new(),
        };
        let unknown: Vec<Bdf> = checked
            .iter()
            .filter(|i| self.redirects[**i as usize].is_none())
            .map(|i| self.bdfs[*i as usize])
            .collect();

        let acs_list: Vec<Bdf> = walk.acs_redirect.iter().map(|i| self.bdfs[*i]).collect();
        if walk.common.is_none() {
            v.reasons.push(Reason::NoCommonUpstreamBridge);
        } else if !acs_list.is_empty() {
            v.reasons.push(Reason::AcsRedirect {
                functions: acs_list.clone(),
            });
        }
        if v.map_type != MapType::BusAddr {
            let host = &self.tree.host;
            let cpu = cpu_description(host);
            if self.cpu_supports {
                v.reasons.push(Reason::CpuAllowsHostBridge { cpu });
            } else {
                let bridges = self.host_bridges(a, b);
                if v.map_type == MapType::ThruHostBridge {
                    v.reasons.push(Reason::HostBridgeWhitelisted {
                        host_bridges: bridges,
                    });
                } else {
                    v.reasons.push(Reason::HostBridgeNotWhitelisted {
                        host_bridges: bridges,
                        cpu,
                        acs_redirect: acs_list,
                    });
                }
                if host.cpu_supports_p2pdma().is_none() {
                    v.reasons.push(Reason::CpuUnknown);
                }
            }
        }
        if !unknown.is_empty() {
            v.reasons.push(Reason::AcsUnknown { functions: unknown });
        }

        let provider_fn = &self.tree.functions[&provider];
        match provider_fn.p2pmem {
            None => v
                .reasons
                .push(Reason::ProviderHasNoP2pmem { bdf: provider }),
            Some(p) if !p.published => v
                .reasons
                .push(Reason::ProviderNotPublished { bdf: provider }),
            Some(_) => {}
        }
        match self.tree.host.p2pdma_config {
            KernelP2pdma::Yes => {}
            KernelP2pdma::No => v.reasons.push(Reason::KernelWithoutP2pdma {
                source: self.tree.host.p2pdma_config_source.clone(),
            }),
            KernelP2pdma::Unknown => v.reasons.push(Reason::KernelP2pdmaUnknown {
                source: self.tree.host.p2pdma_config_source.clone(),
            }),
        }
        if v.reasons.iter().any(Reason::blocks) {
            v.map_type = MapType::NotSupported;
        }
        v.bottleneck = self.bottleneck(&v.path, v.common_upstream);
        v
    }

    fn host_bridges(&self, a: usize, b: usize) -> Vec<HostBridgeId> {
        let mut names = vec![&self.tree.functions[&self.bdfs[a]].root_bus];
        let other = &self.tree.functions[&self.bdfs[b]].root_bus;
        if other != names[0] {
            names.push(other);
        }
        names
            .into_iter()
            .map(|name| {
                let dev = self.tree.host_bridge_device(name);
                HostBridgeId {
                    root_bus: name.clone(),
                    device: dev.map(|d| d.bdf),
                    ids: dev.map(|d| (d.vendor, d.device)),
                }
            })
            .collect()
    }

    /// The slowest known link among the links the path crosses: each function on it
    /// except the common bridge contributes the link to its upstream port (a VF uses its
    /// PF's link; a function on a root bus has none).
    fn bottleneck(&self, path: &[Bdf], common: Option<Bdf>) -> Option<Bottleneck> {
        path.iter()
            .filter(|b| Some(**b) != common)
            .filter_map(|b| {
                let f = self.tree.function(*b)?;
                f.upstream?;
                let link_fn = f.physfn.and_then(|pf| self.tree.function(pf)).unwrap_or(f);
                let link = link_fn.link.current().or_else(|| {
                    self.tree
                        .function(f.upstream?)
                        .and_then(|up| up.link.current())
                })?;
                Some(Bottleneck {
                    below: *b,
                    link,
                    bandwidth_gbps: link.bandwidth_gbps(),
                })
            })
            .min_by(|x, y| x.bandwidth_gbps.total_cmp(&y.bandwidth_gbps))
    }

    /// `pci_p2pmem_find_many()`: the published provider closest to all clients.
    pub fn choose_provider(&self, clients: &[Bdf]) -> Result<ProviderChoice, TopologyError> {
        if clients.is_empty() {
            return Err(TopologyError::NoClients);
        }
        let mut client_idx = Vec::with_capacity(clients.len());
        for c in clients {
            client_idx.push(
                *self
                    .index
                    .get(c)
                    .ok_or(TopologyError::UnknownFunction { bdf: *c })?,
            );
        }
        let mut candidates = Vec::new();
        for provider in self.tree.providers() {
            let p = self.index[&provider.bdf];
            let published = provider.p2pmem.is_some_and(|m| m.published);
            let mut total = 0u32;
            let mut refused_by = None;
            for (c, &ci) in clients.iter().zip(&client_idx) {
                let pair = self.pair_map_fast(p, ci);
                if pair.map_type == MapType::NotSupported {
                    refused_by = Some(*c);
                    break;
                }
                total += pair.distance;
            }
            candidates.push(Candidate {
                provider: provider.bdf,
                published,
                distance: refused_by.is_none().then_some(total),
                refused_by,
            });
        }
        let best = candidates
            .iter()
            .filter(|c| c.published)
            .filter_map(|c| c.distance)
            .min();
        let Some(best) = best else {
            return Err(TopologyError::NoCompatibleProvider {
                clients: clients.to_vec(),
                candidates,
            });
        };
        let tied: Vec<Bdf> = candidates
            .iter()
            .filter(|c| c.published && c.distance == Some(best))
            .map(|c| c.provider)
            .collect();
        let provider = tied[0];
        let mut explanation = format!(
            "{provider} has the smallest total distance ({best}) to {} among published providers",
            bdf_list(clients).replace(';', ", ")
        );
        if tied.len() > 1 {
            explanation.push_str(&format!(
                "; tied with {}: the kernel would pick one at random, p2pdma picks the lowest address",
                tied[1..].iter().map(Bdf::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
        if clients.contains(&provider) {
            explanation.push_str("; it is one of the clients (its own memory)");
        }
        Ok(ProviderChoice {
            provider,
            distance: best,
            tied,
            candidates,
            explanation,
        })
    }

    /// The topology map type of every (row, column) pair.
    pub fn matrix(&self, rows: &[Bdf], cols: &[Bdf]) -> Vec<Vec<Option<Cell>>> {
        let col_idx: Vec<Option<usize>> = cols.iter().map(|c| self.index.get(c).copied()).collect();
        rows.iter()
            .map(|r| {
                let ri = self.index.get(r).copied();
                col_idx
                    .iter()
                    .map(|ci| {
                        let pair = self.pair_map_fast(ri?, (*ci)?);
                        Some(Cell {
                            map_type: pair.map_type,
                            distance: pair.distance,
                            acs_redirect: pair.acs_redirect,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// One cell of a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Map type by the topology rules.
    pub map_type: MapType,
    /// Distance.
    pub distance: u32,
    /// Whether ACS redirect on the path sends it to the root complex.
    pub acs_redirect: bool,
}

impl Cell {
    /// Short label: `X` (same function), `BUS2`, `HB6`, `ACS4` (host bridge because of
    /// ACS), `NO6` (refused).
    pub fn label(&self) -> String {
        match (self.map_type, self.distance, self.acs_redirect) {
            (MapType::BusAddr, 0, _) => "X".to_owned(),
            (MapType::BusAddr, d, _) => format!("BUS{d}"),
            (MapType::ThruHostBridge, d, true) => format!("ACS{d}"),
            (MapType::ThruHostBridge, d, false) => format!("HB{d}"),
            (MapType::NotSupported, d, _) => format!("NO{d}"),
        }
    }
}

fn cpu_description(host: &crate::host::HostFacts) -> String {
    match (&host.cpu_vendor, host.cpu_family) {
        (Some(v), Some(f)) => format!("{v} family {f:#x}"),
        (Some(v), None) => v.clone(),
        _ => "unknown CPU".to_owned(),
    }
}

/// One provider considered by [`choose_provider`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// The provider.
    pub provider: Bdf,
    /// Whether its pool is published (the kernel only considers published ones).
    pub published: bool,
    /// Sum of distances to all clients, if all can use it.
    pub distance: Option<u32>,
    /// The first client that cannot use it.
    pub refused_by: Option<Bdf>,
}

/// The provider [`choose_provider`] picked, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderChoice {
    /// The chosen provider.
    pub provider: Bdf,
    /// Its total distance to the clients.
    pub distance: u32,
    /// All providers at that distance (the kernel picks randomly; we take the first).
    pub tied: Vec<Bdf>,
    /// Every provider considered.
    pub candidates: Vec<Candidate>,
    /// In words.
    pub explanation: String,
}

/// Why no provider could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// No clients were given.
    #[error("no client devices given: name at least one")]
    NoClients,
    /// A client is not in the tree.
    #[error("{bdf} is not a PCI function in this tree: check the address with `p2pdma topo`")]
    UnknownFunction {
        /// The address.
        bdf: Bdf,
    },
    /// No published provider can serve every client.
    #[error("no published p2pmem provider can serve all of {}: {}", bdf_list(clients).replace(';', ", "), describe_candidates(candidates))]
    NoCompatibleProvider {
        /// The clients.
        clients: Vec<Bdf>,
        /// Every provider considered.
        candidates: Vec<Candidate>,
    },
}

fn describe_candidates(candidates: &[Candidate]) -> String {
    if candidates.is_empty() {
        return "this system has no p2pmem providers".to_owned();
    }
    candidates
        .iter()
        .map(|c| match (c.published, c.refused_by) {
            (false, _) => format!("{} not published", c.provider),
            (true, Some(client)) => format!("{} unreachable from {client}", c.provider),
            (true, None) => format!("{} ok", c.provider),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The verdict for `provider` and `client` (see the module docs for the rules).
pub fn verdict(tree: &PciTree, provider: Bdf, client: Bdf) -> Verdict {
    Topology::new(tree).verdict(provider, client)
}

/// The provider the kernel's `pci_p2pmem_find_many()` would pick for `clients`:
/// among published providers every client can reach, the smallest total distance
/// (so a client's own memory, distance 0, wins). Ties: the kernel picks at random;
/// this picks the lowest address, so the answer is reproducible.
pub fn choose_provider(tree: &PciTree, clients: &[Bdf]) -> Result<ProviderChoice, TopologyError> {
    Topology::new(tree).choose_provider(clients)
}

#[cfg(test)]
mod tests;
