//! `p2pdma probe`: one real P2P read, to learn what the kernel allows between two devices.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use p2pdma::blockdev::BlockDevice;
use p2pdma::p2pmem::{P2pBuffer, P2pmemError, Provider};
use p2pdma::Bdf;
use serde::Serialize;

use crate::exit::Kind;
use crate::output::{self, ErrorObject};
use crate::Globals;

/// Arguments of `p2pdma probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The p2pmem provider to allocate the buffer from (PCI address, e.g. 0000:01:00.0).
    #[arg(long, value_name = "BDF")]
    provider: Bdf,
    /// The block device to read from with O_DIRECT (e.g. /dev/nvme1n1). Nothing is written.
    #[arg(value_name = "CLIENT")]
    client: PathBuf,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

/// What the kernel answered.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    /// The read completed: the client DMAed into the provider's memory.
    Ok,
    /// The kernel refused P2P between the two devices (EREMOTEIO, or EINVAL on newer kernels).
    P2pRefused,
    /// The read failed for another reason.
    Error,
}

/// The probe's result, printed as JSON with `--json`.
#[derive(Debug, Serialize)]
struct ProbeReport {
    provider: Bdf,
    client: PathBuf,
    /// Bytes asked for (the client's logical block size rounded up to a page).
    bytes: usize,
    /// Bytes the read returned (0 unless `result` is `ok`).
    bytes_read: usize,
    result: Outcome,
    /// After an `ok`: whether the bytes that landed in device memory equal the same block
    /// read through host memory (a buffered read).
    matches_host_read: Option<bool>,
    errno: Option<i32>,
    /// Unless `result` is `ok`: the contract's error object (kind `p2p_refused` or
    /// `failure`, the exit status, the kernel's error in `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorObject>,
}

/// Allocates one small buffer from the provider and reads the client's first block into
/// it with one O_DIRECT `pread`. Exits 0 when the read brought the device's data, 3
/// ([`Kind::P2pRefused`]) when the kernel refused P2P, 1 when the read failed otherwise
/// or the probe cannot be set up.
pub fn probe(args: ProbeArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let provider = Provider::open(&globals.sysfs, args.provider)?;
    let client = BlockDevice::read_devnode(&globals.sysfs, &args.client)
        .with_context(|| format!("cannot probe with client {}", args.client.display()))?;
    // The allocation rounds up to a page, which keeps the read block aligned.
    let mut buffer = provider.allocate(client.logical_block_size as usize)?;
    let bytes = buffer.len();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&args.client)
        .with_context(|| format!("cannot open {} with O_DIRECT", args.client.display()))?;

    let (result, bytes_read, source) = match buffer.pread(&file, 0, 0, bytes) {
        Ok(n) => (Outcome::Ok, n, None),
        Err(e) if e.is_p2p_refusal() => (Outcome::P2pRefused, 0, Some(e)),
        Err(e) => (Outcome::Error, 0, Some(e)),
    };
    let matches_host_read = if result == Outcome::Ok {
        Some(same_as_host_read(&buffer, &args.client, bytes_read)?)
    } else {
        None
    };
    let errno = source.as_ref().and_then(errno_of);
    let kind = match result {
        Outcome::Ok => None,
        Outcome::P2pRefused => Some(Kind::P2pRefused),
        Outcome::Error => Some(Kind::Failure),
    };
    let error = kind.zip(source.as_ref()).map(|(kind, e)| ErrorObject {
        kind,
        message: chain_text(e),
        exit_code: kind.code(),
        details: Default::default(),
    });
    let report = ProbeReport {
        provider: args.provider,
        client: args.client,
        bytes,
        bytes_read,
        result,
        matches_host_read,
        errno,
        error,
    };
    print_report(&report, args.json)?;
    Ok(kind.map_or(ExitCode::SUCCESS, Kind::exit))
}

/// Compares the first `len` bytes of `buffer` with the client's first `len` bytes read
/// through the page cache.
fn same_as_host_read(buffer: &P2pBuffer, client: &Path, len: usize) -> anyhow::Result<bool> {
    use std::io::Read;
    let mut host = vec![0u8; len];
    std::fs::File::open(client)
        .and_then(|mut f| f.read_exact(&mut host))
        .with_context(|| format!("cannot read {} through host memory", client.display()))?;
    let mut device = vec![0u8; len];
    buffer.read_into(0, &mut device)?;
    Ok(host == device)
}

fn errno_of(e: &P2pmemError) -> Option<i32> {
    match e {
        P2pmemError::Transfer { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// The error and its causes on one line.
fn chain_text(e: &P2pmemError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn print_report(report: &ProbeReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    if json {
        return Ok(output::print_json(report, false)?);
    }
    let mut out = output::stdout();
    let head = format!("{} <- {}", report.provider, report.client.display());
    match report.result {
        Outcome::Ok => writeln!(
            out,
            "{head}: ok, read {} of {} bytes into the provider's memory by P2P DMA ({})",
            report.bytes_read,
            report.bytes,
            if report.matches_host_read == Some(true) {
                "same bytes as a read through host memory"
            } else {
                "DIFFERENT bytes from a read through host memory"
            }
        )?,
        Outcome::P2pRefused => writeln!(
            out,
            "{head}: p2p-refused, the kernel will not do P2P DMA between these devices ({})",
            report
                .error
                .as_ref()
                .map_or("no error text", |e| e.message.as_str())
        )?,
        Outcome::Error => writeln!(
            out,
            "{head}: error, the read failed for a reason other than P2P ({})",
            report
                .error
                .as_ref()
                .map_or("no error text", |e| e.message.as_str())
        )?,
    }
    Ok(())
}
