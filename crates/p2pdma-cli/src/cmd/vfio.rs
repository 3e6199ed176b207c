//! `p2pdma vfio attach|detach|info` and `p2pdma copy --via vfio`: the VFIO provider
//! (crate `p2pdma-vfio`). Parse, call the library, print.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use p2pdma::Bdf;
use p2pdma_vfio::copy::{CopySpec, Session, Step};
use p2pdma_vfio::driver::{CmbInfo, Controller, PAGE};
use p2pdma_vfio::nvme::cmd::{IdentifyController, IdentifyNamespace};
use p2pdma_vfio::nvme::regs::{CmbLoc, CmbSz};
use p2pdma_vfio::vfio::{iommu_group, Container, Device, IommuMapping, Mmio};
use p2pdma_vfio::{bind, BarPool};
use serde::Serialize;

use crate::cmd::copy::CopyArgs;
use crate::exit::Kind;
use crate::output::{self, Failure};
use crate::Globals;

/// `p2pdma vfio`.
#[derive(Debug, clap::Subcommand)]
pub enum VfioCommand {
    /// Move NVMe controllers (or a memory BAR's device) to vfio-pci, refusing controllers
    /// whose namespaces are mounted or held; the old driver is remembered.
    Attach(BdfsArgs),
    /// Give devices back to the driver they had before attach (/dev/nvmeXnY returns).
    Detach(BdfsArgs),
    /// Identify a controller bound to vfio-pci: namespaces, CMB, IOMMU group.
    Info(InfoArgs),
}

/// Devices to attach or detach.
#[derive(Debug, clap::Args)]
pub struct BdfsArgs {
    /// PCI addresses (DDDD:BB:DD.F).
    #[arg(required = true, value_name = "BDF")]
    bdfs: Vec<Bdf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `vfio info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The controller (bound to vfio-pci).
    #[arg(value_name = "BDF")]
    bdf: Bdf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `p2pdma vfio ...`.
pub fn run(cmd: VfioCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        VfioCommand::Attach(a) => {
            let mut done = Vec::new();
            for bdf in &a.bdfs {
                done.push(bind::attach(&globals.sysfs, *bdf)?);
            }
            if a.json {
                output::print_json(&done, false)?;
            } else {
                for d in &done {
                    println!(
                        "{}: on vfio-pci{} (was {})",
                        d.bdf,
                        if d.already { " already" } else { "" },
                        d.previous_driver.as_deref().unwrap_or("no driver")
                    );
                }
            }
        }
        VfioCommand::Detach(a) => {
            let mut done = Vec::new();
            for bdf in &a.bdfs {
                done.push(bind::detach(&globals.sysfs, *bdf)?);
            }
            if a.json {
                output::print_json(&done, false)?;
            } else {
                for d in &done {
                    println!(
                        "{}: back on {}",
                        d.bdf,
                        d.driver.as_deref().unwrap_or("no driver")
                    );
                }
            }
        }
        VfioCommand::Info(a) => info(a, globals)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct NamespaceInfo {
    nsid: u32,
    #[serde(flatten)]
    id: IdentifyNamespace,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct CmbReport {
    location: CmbLoc,
    size: CmbSz,
}

#[derive(Debug, Serialize)]
struct Info {
    bdf: String,
    iommu_group: Option<u32>,
    controller: IdentifyController,
    max_transfer_bytes: usize,
    namespaces: Vec<NamespaceInfo>,
    cmb: Option<CmbReport>,
}

fn info(a: InfoArgs, globals: &Globals) -> anyhow::Result<()> {
    let container = Container::open()?;
    let mut c = Controller::open(&container, &globals.sysfs, a.bdf, HOST_IOVA)?;
    let mut namespaces = Vec::new();
    for nsid in c.active_namespaces()? {
        let id = c.namespace(nsid)?;
        namespaces.push(NamespaceInfo {
            nsid,
            bytes: id.bytes(),
            id,
        });
    }
    let info = Info {
        bdf: a.bdf.to_string(),
        iommu_group: iommu_group(&globals.sysfs, a.bdf),
        controller: c.identify().clone(),
        max_transfer_bytes: c.max_transfer(),
        namespaces,
        cmb: c
            .cmb_registers()
            .map(|(location, size)| CmbReport { location, size }),
    };
    if a.json {
        output::print_json(&info, false)?;
        return Ok(());
    }
    let mut out = String::new();
    out += &format!(
        "{} {} (serial {}, firmware {}), IOMMU group {}\n",
        info.bdf,
        info.controller.model,
        info.controller.serial,
        info.controller.firmware,
        info.iommu_group
            .map_or("none".to_owned(), |g| g.to_string())
    );
    out += &format!("  max transfer {} bytes\n", info.max_transfer_bytes);
    for n in &info.namespaces {
        out += &format!(
            "  namespace {}: {} bytes, {} blocks of {} bytes\n",
            n.nsid, n.bytes, n.id.blocks, n.id.block_size
        );
    }
    match &info.cmb {
        Some(c) => {
            out += &format!(
                "  CMB: {} bytes in BAR {} at offset {:#x}; read data {}, write data {}, queues {}/{}, lists {}\n",
                c.size.size,
                c.location.bar,
                c.location.offset,
                c.size.read_data,
                c.size.write_data,
                c.size.submission_queues,
                c.size.completion_queues,
                c.size.lists
            )
        }
        None => out += "  CMB: none\n",
    }
    print!("{out}");
    Ok(())
}

/// IOVA of the first controller's queue memory (each next one 16 MiB further).
const HOST_IOVA: u64 = 0x1000_0000;
/// IOVA of the verification buffer.
const VERIFY_IOVA: u64 = 0x3000_0000;
const VERIFY_BYTES: usize = 1 << 20;
/// IOVA where the pool's BAR is mapped (256 GiB: far from guest RAM's identity range).
const POOL_IOVA: u64 = 0x40_0000_0000;

/// `SRC_BDF/NSID` or `DST_BDF/NSID`.
fn parse_target(text: &str) -> anyhow::Result<(Bdf, u32)> {
    let (bdf, nsid) = text.split_once('/').with_context(|| {
        format!("'{text}' is not BDF/NSID (with --via vfio, name namespaces as 0000:03:00.0/1)")
    })?;
    let bdf: Bdf = bdf.parse()?;
    let nsid: u32 = nsid
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .with_context(|| format!("'{nsid}' in '{text}' is not a namespace id (1, 2, ...)"))?;
    Ok((bdf, nsid))
}

#[derive(Debug, Serialize)]
struct VfioSummary {
    via: &'static str,
    src: String,
    dst: String,
    src_offset: u64,
    dst_offset: u64,
    bytes: u64,
    seconds: f64,
    throughput_bytes_per_sec: f64,
    provider: String,
    provider_kind: &'static str,
    pool_iova: String,
    cmb: Option<CmbInfo>,
    chunk_size: u64,
    queue_depth: usize,
    verified: Option<bool>,
    src_digest: Option<String>,
    dst_digest: Option<String>,
    verify_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
struct StopDetails {
    written: Vec<(u64, u64)>,
    bytes_written: u64,
    uncertain: Vec<(u64, u64)>,
    revocation: Vec<Step>,
}

/// `p2pdma copy --via vfio SRC_BDF/NSID DST_BDF/NSID`.
pub fn copy(args: &CopyArgs, provider_bar: u32, globals: &Globals) -> anyhow::Result<ExitCode> {
    let (src_bdf, src_nsid) = parse_target(&args.src.to_string_lossy())?;
    let (dst_bdf, dst_nsid) = parse_target(&args.dst.to_string_lossy())?;
    if args.src_offset != args.dst_offset {
        bail!("--via vfio copies at the same offset on both namespaces: give --src-offset and --dst-offset equal");
    }
    if (src_bdf, src_nsid) == (dst_bdf, dst_nsid) {
        bail!("source and destination are the same namespace ({src_bdf}/{src_nsid})");
    }
    let offset = args.src_offset;
    let container = Container::open()?;
    let mut controllers = vec![Controller::open(
        &container,
        &globals.sysfs,
        src_bdf,
        HOST_IOVA,
    )?];
    let dst_index = if dst_bdf == src_bdf {
        0
    } else {
        controllers.push(Controller::open(
            &container,
            &globals.sysfs,
            dst_bdf,
            HOST_IOVA + 0x100_0000,
        )?);
        1
    };
    let src_ns = controllers[0].namespace(src_nsid)?;
    let dst_ns = controllers[dst_index].namespace(dst_nsid)?;
    if src_ns.blocks == 0 || dst_ns.blocks == 0 {
        bail!("namespace {src_bdf}/{src_nsid} or {dst_bdf}/{dst_nsid} is not active (0 blocks): check `p2pdma vfio info`");
    }
    if src_ns.block_size != dst_ns.block_size {
        bail!(
            "{src_bdf}/{src_nsid} has {}-byte blocks and {dst_bdf}/{dst_nsid} {}-byte blocks: --via vfio needs equal block sizes",
            src_ns.block_size,
            dst_ns.block_size
        );
    }
    let block = u64::from(src_ns.block_size);
    let length = args
        .length
        .unwrap_or_else(|| src_ns.bytes().min(dst_ns.bytes()).saturating_sub(offset));
    if length == 0 || !offset.is_multiple_of(block) || !length.is_multiple_of(block) {
        return Err(Failure::new(
            Kind::InvalidInput,
            anyhow::anyhow!("offset {offset} and length {length} must be non-zero multiples of the {block}-byte logical block"),
        )
        .into());
    }
    for (bdf, nsid, ns) in [(src_bdf, src_nsid, src_ns), (dst_bdf, dst_nsid, dst_ns)] {
        if offset + length > ns.bytes() {
            return Err(Failure::new(
                Kind::InvalidInput,
                anyhow::anyhow!(
                    "{bdf}/{nsid} holds {} bytes: offset {offset} + length {length} runs past its end",
                    ns.bytes()
                ),
            )
            .into());
        }
    }

    // The pool: a controller's CMB, or another device's BAR.
    let provider = args.provider.unwrap_or(src_bdf);
    let mut cmb = None;
    let mut provider_device = None;
    let (pool, mapping, provider_kind) =
        if let Some(i) = controllers.iter().position(|c| c.bdf() == provider) {
            let (info, mapping) = controllers[i].enable_cmb(POOL_IOVA)?;
            let pool = BarPool::new(
                &format!("the CMB of {provider}"),
                mapping.memory().clone(),
                info.location.offset,
                info.size.size,
                info.iova,
                PAGE as u64,
            )?;
            cmb = Some(info);
            (pool, mapping, "cmb")
        } else {
            let dev = Device::open(&container, &globals.sysfs, provider)?;
            let bar = dev.map_bar(provider_bar)?;
            let len = bar.len() as u64;
            let mapping = IommuMapping::new(&container, bar, POOL_IOVA)?;
            let pool = BarPool::new(
                &format!("BAR {provider_bar} of {provider}"),
                mapping.memory().clone(),
                0,
                len,
                POOL_IOVA,
                PAGE as u64,
            )?;
            provider_device = Some(dev);
            (pool, mapping, "bar")
        };
    let max_transfer = controllers
        .iter()
        .map(|c| c.max_transfer() as u64)
        .min()
        .unwrap_or(PAGE as u64);
    let chunk = args.chunk_size.min(max_transfer).max(block) / block * block;
    let chunk = chunk.div_ceil(PAGE as u64) * PAGE as u64;
    let (_, pool_len, _, _) = pool.stats();
    let depth = (args.queue_depth as usize)
        .min((pool_len / chunk) as usize)
        .clamp(1, 32);
    let mut requests = Vec::new();
    for c in &controllers {
        requests.push((c.bdf().to_string(), c.device().request_fd()?));
    }
    if let Some(d) = &provider_device {
        requests.push((d.bdf().to_string(), d.request_fd()?));
    }
    let pool_iova = pool.iova();
    let mut session = Session {
        controllers,
        pool,
        pool_mapping: Some(mapping),
        provider: provider_device,
        requests,
        command_deadline: Duration::from_secs(30),
        drain_deadline: Duration::from_secs(5),
    };
    let spec = CopySpec {
        src: 0,
        src_nsid,
        dst: dst_index,
        dst_nsid,
        offset,
        length,
        chunk,
        depth,
        block,
    };
    let outcome = session.copy(&spec, &mut || false);
    if !globals.quiet {
        for s in &outcome.revocation {
            eprintln!("p2pdma: revocation +{:.1} ms: {}", s.at_ms, s.what);
        }
    }
    if let Some(stop) = outcome.stop {
        let bytes_written = outcome.written.iter().map(|(s, e)| e - s).sum();
        let details = StopDetails {
            written: outcome.written.clone(),
            bytes_written,
            uncertain: outcome.uncertain.clone(),
            revocation: outcome.revocation,
        };
        let ranges: Vec<String> = outcome
            .written
            .iter()
            .map(|(s, e)| format!("[{s}, {e})"))
            .collect();
        let kind = if bytes_written > 0 || !outcome.uncertain.is_empty() {
            Kind::PartialCopy
        } else {
            Kind::Failure
        };
        let err = anyhow::Error::new(stop).context(format!(
            "the copy stopped part-way: destination {dst_bdf}/{dst_nsid} bytes written: {}{}",
            if ranges.is_empty() {
                "none".to_owned()
            } else {
                ranges.join(", ")
            },
            if outcome.uncertain.is_empty() {
                String::new()
            } else {
                format!(
                    "; possibly written (command cut off): {:?}",
                    outcome.uncertain
                )
            }
        ));
        return Err(Failure::new(kind, err).with_details(&details).into());
    }
    let seconds = outcome.elapsed.as_secs_f64();
    let mut summary = VfioSummary {
        via: "vfio",
        src: format!("{src_bdf}/{src_nsid}"),
        dst: format!("{dst_bdf}/{dst_nsid}"),
        src_offset: offset,
        dst_offset: offset,
        bytes: length,
        seconds,
        throughput_bytes_per_sec: if seconds > 0.0 {
            length as f64 / seconds
        } else {
            0.0
        },
        provider: provider.to_string(),
        provider_kind,
        pool_iova: format!("{pool_iova:#x}"),
        cmb,
        chunk_size: chunk,
        queue_depth: depth,
        verified: None,
        src_digest: None,
        dst_digest: None,
        verify_seconds: None,
    };
    if args.verify {
        let started = Instant::now();
        let buffer = Mmio::anonymous(VERIFY_BYTES, "the verification buffer")?;
        let vmap = IommuMapping::new(
            session.controllers[0].device().container(),
            buffer,
            VERIFY_IOVA,
        )?;
        let s = session.digest((0, src_nsid), (offset, length), block, &vmap)?;
        let d = session.digest((dst_index, dst_nsid), (offset, length), block, &vmap)?;
        summary.verified = Some(s == d);
        summary.src_digest = Some(format!("{s:032x}"));
        summary.dst_digest = Some(format!("{d:032x}"));
        summary.verify_seconds = Some(started.elapsed().as_secs_f64());
        if s != d {
            let err = anyhow::anyhow!(
                "verification failed: {dst_bdf}/{dst_nsid} differs from {src_bdf}/{src_nsid} in [{offset}, {}) (xxh3-128 {d:032x} vs {s:032x})",
                offset + length
            );
            return Err(Failure::new(Kind::VerifyMismatch, err)
                .with_details(&summary)
                .into());
        }
    }
    if args.json {
        output::print_json(&summary, false)?;
    } else {
        println!(
            "copied {} bytes from {} to {} via vfio through {} of {} in {:.2} s ({:.1} MiB/s){}",
            summary.bytes,
            summary.src,
            summary.dst,
            if provider_kind == "cmb" {
                "the CMB"
            } else {
                "a BAR"
            },
            summary.provider,
            seconds,
            summary.throughput_bytes_per_sec / 1048576.0,
            match summary.verified {
                Some(true) => format!(
                    ", verified (xxh3-128 {})",
                    summary.dst_digest.as_deref().unwrap_or("")
                ),
                _ => String::new(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
