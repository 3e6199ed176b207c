//! `p2pdma lab ...`: set up the host, build the kernel, boot topologies, run the demo,
//! and the small helpers the guest side uses.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use p2pdma_lab::check::{self, CheckRequest, KernelInfo};
use p2pdma_lab::kernel::{BuildEvent, Flavour};
use p2pdma_lab::obtain::{self, KernelProgress, KernelRequest};
use p2pdma_lab::spec::Catalog;
use p2pdma_lab::vm::{self, Accel, Fault, RunRequest};
use p2pdma_lab::{guest, host, paths};

use crate::Globals;

use crate::exit::{Kind, LAB_FAILURE};
use crate::output::{self, Failure};

/// The lab's subcommands.
#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing would buy nothing
pub enum LabCommand {
    /// Check the host and install what the lab needs (Debian: apt-get; elsewhere: a list).
    Setup(SetupArgs),
    /// Build the lab kernel, or fetch Debian's stock one with --flavour stock (cached
    /// outside the repository; a second call returns at once).
    Kernel(KernelArgs),
    /// List the topologies (shipped and your own).
    Topologies(TopologiesArgs),
    /// Boot a topology, run a shell command in the guest, return its status and output.
    Run(RunArgs),
    /// The tour for a newcomer without hardware: boot `fast` on Debian's stock 7.2 kernel
    /// (fetched on first use, no build) and show P2P at work.
    Demo(DemoArgs),
    /// Measure boot-to-command time of topologies (min/median/max over several boots).
    Bench(BenchArgs),
    /// Check a kernel for P2PDMA: build it (cached), boot every shipped topology, compare
    /// every pair's predicted verdict with the kernel's own answer, make a verified copy
    /// in each, run the core teardown scenarios, scan the kernel log, and report.
    Check(CheckArgs),
    /// Helpers for commands running inside the lab guest.
    #[command(subcommand)]
    Guest(GuestCommand),
}

/// `p2pdma lab setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    check: bool,
}

/// Where the kernel comes from (shared by `kernel`, `run` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct KernelChoice {
    /// Kernel source: a tree or a tarball (default: the --release's Debian source).
    #[arg(long, value_name = "DIR|TARBALL")]
    source: Option<PathBuf>,
    /// Which kernel release: 6.12 (Debian bookworm's linux-source-6.12) or 7.2 (Debian
    /// sid's linux-source-7.2, or its stock kernel with --flavour stock; fetched once into
    /// the cache through a private apt configuration). Default: 6.12, or 7.2 for the stock
    /// kernel. --source and --kernel take precedence over it.
    #[arg(long, value_name = "RELEASE", env = "P2PDMA_LAB_RELEASE")]
    release: Option<String>,
    /// Which kernel: standard, debug or no-p2pdma (built by the lab from source), or stock (the
    /// distribution's own kernel, Debian sid's 7.2 image and modules, downloaded, not
    /// built). Default: standard; `lab demo` boots the stock kernel.
    #[arg(long, value_enum, env = "P2PDMA_LAB_FLAVOUR")]
    flavour: Option<FlavourArg>,
    /// Boot this bzImage instead of the cached lab kernel.
    #[arg(long, value_name = "BZIMAGE", env = "P2PDMA_LAB_KERNEL", conflicts_with_all = ["source", "flavour"])]
    kernel: Option<PathBuf>,
}

impl KernelChoice {
    /// The library's request for this choice.
    fn request(&self, jobs: Option<usize>) -> anyhow::Result<KernelRequest> {
        if let Some(image) = &self.kernel {
            return Ok(KernelRequest::Image(image.clone()));
        }
        let flavour = match self.flavour.unwrap_or(FlavourArg::Standard) {
            FlavourArg::Standard => Flavour::Standard,
            FlavourArg::Debug => Flavour::Debug,
            FlavourArg::NoP2pdma => Flavour::NoP2pdma,
            FlavourArg::Stock => {
                if self.source.is_some() {
                    bail!("--flavour stock boots the distribution's kernel as it is; --source builds one: choose one of them");
                }
                return Ok(KernelRequest::Stock {
                    release: self.release.clone(),
                });
            }
        };
        Ok(KernelRequest::Build {
            flavour,
            release: self.release.clone(),
            source: self.source.clone(),
            jobs,
        })
    }

    /// This choice with the stock kernel as its default flavour, when the user named
    /// neither a flavour nor a source and the release (if named) has a stock kernel.
    fn stock_by_default(&self) -> KernelChoice {
        let mut choice = self.clone();
        let stock_release = choice
            .release
            .as_deref()
            .is_none_or(|r| p2pdma_lab::stock::StockRelease::named(r).is_ok());
        if choice.flavour.is_none() && choice.source.is_none() && stock_release {
            choice.flavour = Some(FlavourArg::Stock);
        }
        choice
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FlavourArg {
    Standard,
    Debug,
    /// Without CONFIG_PCI_P2PDMA (VFIO and the IOMMU on), for the VFIO path.
    NoP2pdma,
    Stock,
}

/// `p2pdma lab kernel`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    #[command(flatten)]
    choice: KernelChoice,
    /// Parallel compile jobs (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print only the path of the image.
    #[arg(long)]
    print_path: bool,
}

/// `p2pdma lab topologies`.
#[derive(Debug, clap::Args)]
pub struct TopologiesArgs {
    /// Also read topologies from this file (same schema as lab/topologies.toml).
    #[arg(long = "topologies", value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// `p2pdma lab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology to boot (see `p2pdma lab topologies`).
    #[arg(long, short)]
    topology: String,
    /// Also read topologies from this file.
    #[arg(long = "topologies", value_name = "FILE")]
    topology_files: Vec<PathBuf>,
    #[command(flatten)]
    kernel: KernelChoice,
    /// Extra kernel command line argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// Copy a host file or directory into the guest (HOST or HOST:GUEST; default guest
    /// path /root/<name>).
    #[arg(long = "file", value_name = "HOST[:GUEST]")]
    files: Vec<String>,
    /// Put fio (with its libraries) into the guest.
    #[arg(long)]
    with_fio: bool,
    /// Copy this guest path back into OUT/fetched after the command (repeatable).
    #[arg(long, value_name = "GUEST_PATH")]
    fetch: Vec<String>,
    /// Run directory for logs, disks and fetched files (default: a new one under the
    /// system temp dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seconds the guest may take to boot.
    #[arg(long, default_value_t = 90)]
    boot_timeout: u64,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Inject a fault from the host: ACTION@signal:NAME (when the guest runs
    /// `p2pdma lab guest signal NAME`) or ACTION@SECONDSs after boot. ACTION is
    /// device_del:ID (hot removal of an NVMe controller or RAM provider) or
    /// throttle:NVME_ID=BYTES_PER_SEC (QEMU I/O throttling of that controller's drive,
    /// so its commands stay in flight for seconds; 0 lifts it).
    #[arg(long = "fault", value_name = "FAULT")]
    faults: Vec<Fault>,
    /// QEMU accelerator; auto uses KVM only where a probe boot shows it works.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Keep the disk images in the run directory.
    #[arg(long)]
    keep_disks: bool,
    /// Write the run's facts (timings, status, logs) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Say nothing but the guest's output and errors (the global --quiet, -q).
    #[arg(skip)]
    quiet: bool,
    /// The shell command to run in the guest (joined with spaces, run by busybox sh).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `p2pdma lab demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    kernel: KernelChoice,
    /// Run directory (default: a new one under the system temp dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `p2pdma lab bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Topologies to boot (default: all).
    #[arg(long = "topology", short)]
    topologies: Vec<String>,
    /// Boots per topology.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    kernel: KernelChoice,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `p2pdma lab check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    kernel: KernelChoice,
    /// Parallel compile jobs when the kernel must be built (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// Boot only these topologies (repeatable; default: every shipped one).
    #[arg(long = "topology", short)]
    topologies: Vec<String>,
    /// Also read topologies from this file (checked too when no --topology is given).
    #[arg(long = "topologies", value_name = "FILE")]
    topology_files: Vec<PathBuf>,
    /// Leave out the teardown scenarios (unbind and hot removal mid-copy).
    #[arg(long)]
    no_scenarios: bool,
    /// Run directory for the boots' logs (default: a new one under the system temp dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
}

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
    #[arg(long, default_value = "1M", value_parser = super::size_usize)]
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
    #[arg(long, default_value = "4k", value_parser = super::size_usize)]
    size: usize,
    /// Reads land at random multiples of --size in the first SPAN bytes of FILE.
    #[arg(long, default_value = "4M", value_parser = super::size_usize)]
    span: usize,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
    /// Write "ready" here once every thread has done its first verified read.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

pub fn run(cmd: LabCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Setup(args) => setup(args),
        LabCommand::Kernel(args) => {
            let kernel = ensure_kernel(&args.choice, args.jobs, globals.quiet)?;
            if args.print_path {
                writeln!(output::stdout(), "{}", kernel.display())?;
            } else {
                writeln!(output::stdout(), "lab kernel: {}", kernel.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Topologies(args) => topologies(args),
        LabCommand::Run(mut args) => {
            args.quiet |= globals.quiet;
            lab_run(args)
        }
        LabCommand::Demo(args) => demo(args),
        LabCommand::Bench(args) => bench(args),
        LabCommand::Check(args) => check(args, globals),
        LabCommand::Guest(g) => guest(g, globals),
    }
}

fn setup(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let reqs = host::check();
    for r in &reqs {
        writeln!(
            output::stdout(),
            "{} {:<40} {:<28} ({})",
            if r.present { "ok     " } else { "missing" },
            r.check,
            r.purpose,
            r.debian_package
        )?;
    }
    let missing = host::missing_packages(&reqs);
    if missing.is_empty() {
        writeln!(output::stdout(), "the lab has everything it needs")?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.check {
        writeln!(
            output::stdout(),
            "missing Debian packages: {}",
            missing.join(" ")
        )?;
        return Ok(ExitCode::FAILURE);
    }
    let plan = host::install(&missing, &p2pdma_lab::paths::cache_root().join("apt"))?;
    if !plan.backports.is_empty() {
        writeln!(
            output::stdout(),
            "from backports (bookworm's versions would replace packages already here): {}",
            plan.backports.join(" ")
        )?;
    }
    let still: Vec<_> = host::check().into_iter().filter(|r| !r.present).collect();
    if !still.is_empty() {
        bail!(
            "after installing, still missing: {}",
            still.iter().map(|r| r.check).collect::<Vec<_>>().join(", ")
        );
    }
    writeln!(output::stdout(), "installed: {}", missing.join(" "))?;
    Ok(ExitCode::SUCCESS)
}

/// The kernel image to boot: the user's, or the cached lab kernel (built when missing).
fn ensure_kernel(
    choice: &KernelChoice,
    jobs: Option<usize>,
    quiet: bool,
) -> anyhow::Result<PathBuf> {
    Ok(obtain_kernel(choice, jobs, quiet)?.image)
}

/// [`ensure_kernel`], saying where the image came from and what getting it cost.
fn obtain_kernel(
    choice: &KernelChoice,
    jobs: Option<usize>,
    quiet: bool,
) -> anyhow::Result<KernelInfo> {
    let request = choice.request(jobs)?;
    Ok(obtain::obtain(&request, &mut BuildProgress::new(quiet))?)
}

/// Kernel build progress: a spinner on a terminal, stage lines otherwise (CI logs).
struct BuildProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    objects: u64,
}

impl BuildProgress {
    fn new(quiet: bool) -> BuildProgress {
        BuildProgress {
            bar: None,
            quiet,
            objects: 0,
        }
    }
}

impl KernelProgress for BuildProgress {
    fn begin(&mut self) {
        self.objects = 0;
        self.bar = (!self.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} {wide_msg}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
    }

    fn event(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::Stage(stage) => match &self.bar {
                Some(bar) => bar.set_prefix(stage),
                None if !self.quiet => eprintln!("lab kernel: {stage}"),
                None => {}
            },
            BuildEvent::Line(line) => {
                let trimmed = line.trim_start();
                if trimmed.starts_with("CC ") || trimmed.starts_with("AS ") {
                    self.objects += 1;
                    let n = self.objects;
                    match &self.bar {
                        Some(bar) => bar.set_message(format!("{n} objects, {trimmed}")),
                        None if !self.quiet && n.is_multiple_of(250) => {
                            eprintln!("lab kernel: {n} objects compiled")
                        }
                        None => {}
                    }
                }
            }
        }
    }

    fn note(&mut self, line: &str) {
        if !self.quiet {
            eprintln!("lab kernel: {line}");
        }
    }

    fn finish(&mut self, message: &str) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.quiet && !message.is_empty() {
            eprintln!("{message}");
        }
    }
}

fn topologies(args: TopologiesArgs) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &args.files)?;
    if args.json {
        output::print_json(&catalog.all(), true)?;
    } else {
        for t in catalog.all() {
            writeln!(output::stdout(), "{:<14} {}", t.name, t.spec.description)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_file_arg(arg: &str) -> anyhow::Result<(PathBuf, String)> {
    let (host, guest) = match arg.split_once(':') {
        Some((h, g)) => (PathBuf::from(h), g.to_owned()),
        None => {
            let host = PathBuf::from(arg);
            let name = host
                .file_name()
                .with_context(|| {
                    format!("--file {arg}: the path has no file name; write HOST:GUEST")
                })?
                .to_string_lossy()
                .into_owned();
            (host, format!("/root/{name}"))
        }
    };
    if !host.exists() {
        bail!(
            "--file {arg}: {} does not exist on the host",
            host.display()
        );
    }
    Ok((host, guest))
}

fn choose_accel(arg: AccelArg, kernel: &Path) -> Accel {
    match arg {
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
        AccelArg::Auto => vm::probe_accel(kernel, &paths::cache_root()),
    }
}

fn lab_run(args: RunArgs) -> anyhow::Result<ExitCode> {
    match lab_run_inner(args) {
        Ok(code) => Ok(code),
        Err(err) => Err(Failure::new(Kind::Lab, err.context("lab")).into()),
    }
}

fn lab_run_inner(args: RunArgs) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &args.topology_files)?;
    let topology = catalog.get(&args.topology)?;
    let files = args
        .files
        .iter()
        .map(|f| parse_file_arg(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let guest_binary = vm::guest_binary()?;
    let kernel = ensure_kernel(&args.kernel, None, args.quiet)?;
    let programs = if args.with_fio {
        vec![paths::which("fio")
            .context("--with-fio: fio is not installed; run `p2pdma lab setup`")?]
    } else {
        Vec::new()
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| paths::run_dir(&topology.name));
    let accel = choose_accel(args.accel, &kernel);
    let request = RunRequest {
        files,
        programs,
        fetch: args.fetch.clone(),
        kernel_args: args.kernel_args.clone(),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        command_timeout: Duration::from_secs(args.timeout),
        faults: args.faults.clone(),
        keep_disks: args.keep_disks,
        ..RunRequest::new(
            topology,
            kernel.clone(),
            guest_binary,
            args.command.join(" "),
            out_dir.clone(),
            accel,
        )
    };
    let outcome = vm::run(&request)?;
    if let Some(report) = &args.report {
        let json = serde_json::json!({
            "topology": request.topology.name,
            "kernel": kernel,
            "run_dir": out_dir,
            "outcome": outcome,
        });
        std::fs::write(report, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write the report {}", report.display()))?;
    }
    if !args.quiet {
        for w in &outcome.warnings {
            eprintln!("lab: warning: {w}");
        }
        eprintln!(
            "lab: {} booted in {:.1} s ({:?}); command exited {} after {:.1} s; logs in {}",
            request.topology.name,
            outcome.boot_seconds,
            outcome.accel,
            outcome.status,
            outcome.command_seconds,
            out_dir.display()
        );
    }
    let _ = std::io::stdout().flush();
    Ok(ExitCode::from(
        u8::try_from(outcome.status).unwrap_or(LAB_FAILURE),
    ))
}

/// The demo's guest script; each step runs the real tool and stops the demo if it fails.
const DEMO_SCRIPT: &str = include_str!("../../../../lab/demo.sh");

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    eprintln!("p2pdma lab demo: a real Linux kernel with CONFIG_PCI_P2PDMA boots in QEMU with two emulated NVMe");
    eprintln!("controllers with Controller Memory Buffers and a RAM-backed p2pmem provider, behind one PCIe");
    eprintln!("switch (topology `fast`); fio runs beside p2pdma for the speed figures.");
    let fio = paths::which("fio")
        .context("the demo compares with fio, which is not installed: run `p2pdma lab setup`")?;
    let kernel = ensure_kernel(&args.kernel.stock_by_default(), None, false)?;
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &[])?;
    let topology = catalog.get("fast")?;
    let out_dir = args.out.unwrap_or_else(|| paths::run_dir("demo"));
    let accel = choose_accel(AccelArg::Auto, &kernel);
    let mut request = RunRequest::new(
        topology,
        kernel,
        vm::guest_binary()?,
        DEMO_SCRIPT.to_owned(),
        out_dir,
        accel,
    );
    request.programs = vec![fio];
    let outcome = match vm::run(&request) {
        Ok(o) => o,
        Err(err) => {
            return Err(Failure::new(Kind::Lab, anyhow::Error::from(err).context("lab")).into())
        }
    };
    eprintln!(
        "demo: guest booted in {:.1} s ({:?}), ran for {:.1} s, exit status {}; kernel log: {}",
        outcome.boot_seconds,
        outcome.accel,
        outcome.command_seconds,
        outcome.status,
        outcome.serial_log.display()
    );
    Ok(ExitCode::from(
        u8::try_from(outcome.status).unwrap_or(LAB_FAILURE),
    ))
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &[])?;
    let names = if args.topologies.is_empty() {
        catalog.names()
    } else {
        args.topologies.clone()
    };
    let kernel = ensure_kernel(&args.kernel, None, false)?;
    let accel = choose_accel(AccelArg::Auto, &kernel);
    let guest_binary = vm::guest_binary()?;
    let mut figures = Vec::new();
    if !args.json {
        writeln!(output::stdout(), "boot-to-command time: QEMU start until the guest has every NVMe namespace and runs the command")?;
        writeln!(
            output::stdout(),
            "{:<14} {:>4} {:>8} {:>8} {:>8} {:>14}",
            "topology",
            "runs",
            "min s",
            "median s",
            "max s",
            "guest uptime s"
        )?;
    }
    for name in names {
        let topology = catalog.get(&name)?;
        let f = p2pdma_lab::bench::boot_times(&topology, &kernel, &guest_binary, accel, args.runs)
            .with_context(|| format!("booting {name}"))
            .map_err(|e| Failure::new(Kind::Lab, e))?;
        if !args.json {
            writeln!(
                output::stdout(),
                "{:<14} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>14.2}",
                f.topology,
                f.runs,
                f.boot_seconds_min,
                f.boot_seconds_median,
                f.boot_seconds_max,
                f.guest_uptime_median
            )?;
        }
        figures.push(f);
    }
    if args.json {
        output::print_json(&figures, true)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &args.topology_files)?;
    let names = if args.topologies.is_empty() {
        // The shipped topologies and those of --topologies files; the user's own file's
        // only when named with --topology.
        Catalog::load(None, &args.topology_files)?.names()
    } else {
        args.topologies.clone()
    };
    let topologies = names
        .iter()
        .map(|n| catalog.get(n))
        .collect::<Result<Vec<_>, _>>()?;
    let guest_binary = vm::guest_binary()?;
    let kernel = obtain_kernel(&args.kernel, args.jobs, globals.quiet)
        .map_err(|e| Failure::new(Kind::Lab, e.context("lab check: the kernel")))?;
    let accel = choose_accel(AccelArg::Auto, &kernel.image);
    let request = CheckRequest {
        kernel,
        guest_binary,
        topologies,
        scenarios: !args.no_scenarios,
        rules_release: globals.kernel_release.clone(),
        accel,
        out_dir: args.out.clone().unwrap_or_else(|| paths::run_dir("check")),
    };
    let quiet = globals.quiet;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("lab check: {line}");
        }
    };
    let mut report = check::run(&request, &mut progress)?;
    // The kernel's time counts from this command's start, not from the first boot.
    report.timings.total_seconds = started.elapsed().as_secs_f64();
    if args.json {
        output::print_json(&report, true)?;
    } else {
        write!(output::stdout(), "{}", report.table())?;
    }
    Ok(if report.summary.passed {
        ExitCode::SUCCESS
    } else if report.summary.boots_failed > 0 {
        ExitCode::from(LAB_FAILURE)
    } else {
        ExitCode::from(crate::exit::FAILURE)
    })
}

fn guest(cmd: GuestCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    let sysfs = &p2pdma::sysfs::SysfsRoot::new(&globals.sysfs);
    match cmd {
        GuestCommand::AsUser { uid, gid, command } => {
            use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
            use std::os::unix::process::CommandExt;
            // This process has one thread, so the thread-level raw syscalls drop the
            // whole process's rights (glibc's setuid(), which std's Command::uid uses,
            // failed with ENOSYS in the static guest binary). Groups first, then the
            // group, then the user, who can change neither afterwards.
            let gid = rustix::process::Gid::from_raw(gid);
            let uid = rustix::process::Uid::from_raw(uid);
            set_thread_groups(&[]).context("setgroups([])")?;
            set_thread_res_gid(gid, gid, gid).context("setresgid")?;
            set_thread_res_uid(uid, uid, uid).context("setresuid")?;
            let err = std::process::Command::new(&command[0])
                .args(&command[1..])
                .exec();
            return Err(anyhow::Error::new(err).context(format!("cannot run {}", command[0])));
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
            let all_intact = report.intact.iter().all(|&i| i);
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
