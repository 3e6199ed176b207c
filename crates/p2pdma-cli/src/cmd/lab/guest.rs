//! `p2pdma lab guest ...`: the helpers commands inside the lab guest use (the work is
//! `p2pdma_lab::guest`'s; this parses and prints).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use p2pdma_lab::guest;

use crate::output;
use crate::Globals;

/// Helpers for use inside the guest.
#[derive(Debug, clap::Subcommand)]
pub enum GuestCommand {
    /// Tell the host NAME happened (fires `--fault ...@signal:NAME`).
    Signal {
        /// The signal's name.
        name: String,
    },
    /// Print the BDF, controller and namespace of the NVMe controller with this serial.
    Nvme {
        /// The serial number from the topology file.
        serial: String,
    },
    /// Unbind a PCI function from its driver (BDF or NVMe serial).
    Unbind {
        /// BDF or serial.
        device: String,
    },
    /// Bind a PCI function to the nvme driver again (BDF or NVMe serial).
    Bind {
        /// BDF or serial.
        device: String,
    },
    /// Small O_DIRECT reads from FILE into PROVIDER's p2pmem, from several threads in a
    /// tight loop, each checked against FILE's bytes read through the page cache at the
    /// start, until STOP_FILE exists. A provider that goes away (unbound, removed) is an
    /// expected outcome: the thread counts it, waits for the provider to come back and
    /// allocates again. Prints one JSON summary; exits 1 if a completed read held wrong
    /// data or an unexpected error occurred.
    ReadLoop(ReadLoopArgs),
    /// Allocate --buffers buffers of --size from PROVIDER, fill them with a pattern, say
    /// so in --ready-file, hold them until --release-file exists (60 s at most), then
    /// check the pattern and exit. A pool that cannot supply a buffer is the library's
    /// error (exit 1, a JSON error object with --json).
    Hold(HoldArgs),
    /// Run PROGRAM as user UID and group GID with no supplementary groups (busybox's su
    /// needs a passwd database the guest lacks, and its setpriv cannot change users);
    /// exits with the program's status.
    AsUser {
        /// The user ID.
        uid: u32,
        /// The group ID.
        gid: u32,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

/// Arguments of `p2pdma lab guest hold`.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// The p2pmem provider (PCI address).
    provider: p2pdma::Bdf,
    /// Bytes per buffer.
    #[arg(long, default_value = "1M", value_parser = crate::cmd::size_usize)]
    size: usize,
    /// Buffers to hold at once.
    #[arg(long, default_value_t = 1)]
    buffers: usize,
    /// Created once every buffer is allocated and filled.
    #[arg(long)]
    ready_file: PathBuf,
    /// Release the buffers once this file exists.
    #[arg(long)]
    release_file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `p2pdma lab guest read-loop`.
#[derive(Debug, clap::Args)]
pub struct ReadLoopArgs {
    /// The p2pmem provider (PCI address).
    provider: p2pdma::Bdf,
    /// The file or block device to read (with O_DIRECT); its first --span bytes must not
    /// change while the loop runs.
    file: PathBuf,
    /// Reading threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Bytes per read (a multiple of the device's logical block size).
    #[arg(long, default_value = "4k", value_parser = crate::cmd::size_usize)]
    size: usize,
    /// Reads land at random multiples of --size in the first SPAN bytes of FILE.
    #[arg(long, default_value = "4M", value_parser = crate::cmd::size_usize)]
    span: usize,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Write "ready" here once every thread has done its first verified read.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Runs `p2pdma lab guest ...`.
pub fn run(cmd: GuestCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    let sysfs = &globals.sysfs;
    match cmd {
        GuestCommand::AsUser { uid, gid, command } => {
            return Err(guest::exec_as_user(uid, gid, &command).into());
        }
        GuestCommand::Signal { name } => guest::signal(&name)?,
        GuestCommand::Nvme { serial } => {
            let c = guest::nvme_by_serial(sysfs, &serial)?;
            writeln!(
                output::stdout(),
                "{} /dev/{} {}",
                c.bdf,
                c.controller,
                c.namespaces
                    .iter()
                    .map(|n| format!("/dev/{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
        }
        GuestCommand::Unbind { device } => {
            let (bdf, driver) = guest::unbind(sysfs, &device)?;
            eprintln!("unbound {bdf} from {driver}");
        }
        GuestCommand::Bind { device } => {
            let bdf = guest::bind_nvme(sysfs, &device)?;
            eprintln!("bound {bdf} to nvme");
        }
        GuestCommand::ReadLoop(a) => {
            let report = guest::read_loop(
                sysfs,
                &guest::ReadLoop {
                    provider: a.provider,
                    file: a.file,
                    threads: a.threads,
                    size: a.size,
                    span: a.span,
                    stop_file: a.stop_file,
                    ready_file: a.ready_file,
                },
            )?;
            output::print_json(&report, false)?;
            return Ok(if report.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        GuestCommand::Hold(a) => {
            let report = guest::hold(
                sysfs,
                &guest::Hold {
                    provider: a.provider,
                    size: a.size,
                    buffers: a.buffers,
                    ready_file: a.ready_file,
                    release_file: a.release_file,
                },
            )?;
            let all_intact = report.all_intact();
            if a.json {
                output::print_json(&report, false)?;
            } else {
                writeln!(
                    output::stdout(),
                    "held {} bytes of p2pmem from {} in {} buffers; patterns {}",
                    report.bytes,
                    report.provider,
                    report.buffers,
                    if all_intact { "intact" } else { "CHANGED" }
                )?;
            }
            return Ok(if all_intact {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_loop_and_hold_parse() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            guest: GuestCommand,
        }
        let cli = Cli::try_parse_from([
            "x",
            "read-loop",
            "0000:05:00.0",
            "/dev/nvme0n1",
            "--threads",
            "4",
            "--size",
            "4k",
            "--span",
            "4M",
            "--stop-file",
            "/tmp/stop",
        ])
        .unwrap();
        match cli.guest {
            GuestCommand::ReadLoop(a) => {
                assert_eq!((a.threads, a.size, a.span), (4, 4096, 4 << 20));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "x",
            "hold",
            "0000:05:00.0",
            "--buffers",
            "4",
            "--size",
            "1M",
            "--ready-file",
            "/tmp/r",
            "--release-file",
            "/tmp/q",
            "--json",
        ])
        .unwrap();
        match cli.guest {
            GuestCommand::Hold(a) => assert_eq!((a.buffers, a.size, a.json), (4, 1 << 20, true)),
            other => panic!("{other:?}"),
        }
    }
}
