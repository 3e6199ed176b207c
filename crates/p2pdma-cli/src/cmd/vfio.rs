//! `p2pdma vfio attach|detach|info` and `p2pdma copy --via vfio`: the VFIO provider
//! (crate `p2pdma-vfio`). Parse, call the library, print.

use std::process::ExitCode;

use p2pdma::Bdf;
use p2pdma_vfio::bind;
use p2pdma_vfio::driver::Controller;
use p2pdma_vfio::job::{self, Namespace, VfioCopyError, VfioCopyJob, HOST_IOVA};
use p2pdma_vfio::nvme::cmd::{IdentifyController, IdentifyNamespace};
use p2pdma_vfio::nvme::regs::{CmbLoc, CmbSz};
use p2pdma_vfio::vfio::{iommu_group, Container};
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

/// `SRC_BDF/NSID` or `DST_BDF/NSID`.
fn parse_target(text: &str) -> anyhow::Result<Namespace> {
    Ok(text.parse::<Namespace>()?)
}

/// `p2pdma copy --via vfio SRC_BDF/NSID DST_BDF/NSID`: the library's
/// [`p2pdma_vfio::job::run`], printed.
pub fn copy(args: &CopyArgs, provider_bar: u32, globals: &Globals) -> anyhow::Result<ExitCode> {
    let job = VfioCopyJob {
        src: parse_target(&args.src.to_string_lossy())?,
        dst: parse_target(&args.dst.to_string_lossy())?,
        src_offset: args.src_offset,
        dst_offset: args.dst_offset,
        length: args.length,
        chunk_size: args.chunk_size,
        queue_depth: args.queue_depth,
        provider: args.provider,
        provider_bar,
        verify: args.verify,
        sysfs: globals.sysfs.clone(),
    };
    let summary = match job::run(&job, &mut ()) {
        Ok(summary) => summary,
        Err(e) => return Err(copy_failure(e, globals.quiet)),
    };
    if let Some(v) = summary.verification.filter(|v| !v.matched()) {
        let at = v.first_difference.unwrap_or(0);
        let err = anyhow::anyhow!(
            "verification failed: {} offset {} differs from {} offset {} (xxh3-128 {:032x} vs {:032x})",
            summary.dst,
            summary.dst_offset + at,
            summary.src,
            summary.src_offset + at,
            v.dst_digest,
            v.src_digest
        );
        return Err(Failure::new(Kind::VerifyMismatch, err)
            .with_details(&summary)
            .into());
    }
    if args.json {
        output::print_json(&summary, false)?;
    } else {
        println!(
            "copied {} bytes from {} to {} via vfio through {} of {} in {:.2} s ({:.1} MiB/s){}",
            summary.bytes,
            summary.src,
            summary.dst,
            if summary.provider_kind == "cmb" {
                "the CMB"
            } else {
                "a BAR"
            },
            summary.provider,
            summary.seconds,
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

/// The exit-code table's reading of a VFIO copy's error; a stopped copy prints its
/// revocation steps (unless quiet) and carries its written ranges as details.
pub fn copy_failure(e: VfioCopyError, quiet: bool) -> anyhow::Error {
    match e {
        VfioCopyError::Stopped(stopped) => {
            if !quiet {
                for s in &stopped.report.revocation {
                    eprintln!("p2pdma: revocation +{:.1} ms: {}", s.at_ms, s.what);
                }
            }
            let kind = if stopped.wrote_anything() {
                Kind::PartialCopy
            } else {
                Kind::Failure
            };
            let details = stopped.report.clone();
            Failure::new(kind, *stopped).with_details(&details).into()
        }
        e if e.is_invalid_input() => Failure::new(Kind::InvalidInput, e).into(),
        e => e.into(),
    }
}
