//! `p2pdma lab ...`: set up the host, build the kernel, boot topologies, run the demo,
//! and the small helpers the guest side uses.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use p2pdma_lab::kernel::{self, BuildEvent, Flavour, KernelSource};
use p2pdma_lab::kernel_source::LabRelease;
use p2pdma_lab::spec::Catalog;
use p2pdma_lab::vm::{self, Accel, Fault, RunRequest};
use p2pdma_lab::{host, paths};

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
    /// Which kernel: standard or debug (built by the lab from source), or stock (the
    /// distribution's own kernel, Debian sid's 7.2 image and modules, downloaded, not
    /// built). Default: standard; `lab demo` boots the stock kernel.
    #[arg(long, value_enum, env = "P2PDMA_LAB_FLAVOUR")]
    flavour: Option<FlavourArg>,
    /// Boot this bzImage instead of the cached lab kernel.
    #[arg(long, value_name = "BZIMAGE", env = "P2PDMA_LAB_KERNEL", conflicts_with_all = ["source", "flavour"])]
    kernel: Option<PathBuf>,
}

impl KernelChoice {
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
    /// Inject a fault from the host: device_del:ID@signal:NAME (when the guest runs
    /// `p2pdma lab guest signal NAME`) or device_del:ID@SECONDSs after boot.
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
    if let Some(image) = &choice.kernel {
        if !image.is_file() {
            bail!(
                "kernel image {} not found: pass a bzImage, or omit --kernel to use the lab kernel",
                image.display()
            );
        }
        return Ok(image.clone());
    }
    let flavour = match choice.flavour.unwrap_or(FlavourArg::Standard) {
        FlavourArg::Standard => Flavour::Standard,
        FlavourArg::Debug => Flavour::Debug,
        FlavourArg::Stock => {
            if choice.source.is_some() {
                bail!("--flavour stock boots the distribution's kernel as it is; --source builds one: choose one of them");
            }
            let release =
                p2pdma_lab::stock::StockRelease::named(choice.release.as_deref().unwrap_or("7.2"))?;
            let progress = BuildProgress::new(quiet);
            let mut on_event = |e: BuildEvent| progress.event(e);
            let stock = p2pdma_lab::stock::ensure(&release, &mut on_event)?;
            if stock.fetched_now {
                progress.finish(&format!(
                    "stock kernel {} fetched and prepared in {:.0} s: {}",
                    stock.kernel_release,
                    stock.seconds,
                    stock.image.display()
                ));
            } else {
                progress.finish("");
            }
            return Ok(stock.image);
        }
    };
    let source = match &choice.source {
        Some(path) => KernelSource::from_path(path)?,
        None => {
            let release = LabRelease::named(choice.release.as_deref().unwrap_or("6.12"))?;
            let mut note = |line: &str| {
                if !quiet {
                    eprintln!("lab kernel: {line}");
                }
            };
            KernelSource::Tarball(release.ensure_tarball(&mut note)?)
        }
    };
    if let KernelSource::Tarball(t) = &source {
        if !t.exists() {
            return Err(kernel::KernelError::SourceMissing { path: t.clone() }.into());
        }
    }
    if let Some(cached) = kernel::cached(&source, flavour)? {
        return Ok(cached.bzimage);
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let progress = BuildProgress::new(quiet);
    let mut on_event = |e: BuildEvent| progress.event(e);
    let built = kernel::ensure(&source, flavour, jobs, &mut on_event)?;
    progress.finish(&format!(
        "lab kernel built in {:.0} s: {}",
        built.build_seconds,
        built.bzimage.display()
    ));
    Ok(built.bzimage)
}

/// Kernel build progress: a spinner on a terminal, stage lines otherwise (CI logs).
struct BuildProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    objects: std::cell::Cell<u64>,
}

impl BuildProgress {
    fn new(quiet: bool) -> BuildProgress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} {wide_msg}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        BuildProgress {
            bar,
            quiet,
            objects: std::cell::Cell::new(0),
        }
    }

    fn event(&self, event: BuildEvent) {
        match event {
            BuildEvent::Stage(stage) => match &self.bar {
                Some(bar) => bar.set_prefix(stage),
                None if !self.quiet => eprintln!("lab kernel: {stage}"),
                None => {}
            },
            BuildEvent::Line(line) => {
                let trimmed = line.trim_start();
                if trimmed.starts_with("CC ") || trimmed.starts_with("AS ") {
                    self.objects.set(self.objects.get() + 1);
                    let n = self.objects.get();
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

    fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
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

fn default_run_dir(label: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir()
        .join("p2pdma-lab")
        .join(format!("{label}-{}-{nanos}", std::process::id()))
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

fn guest_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .context("cannot find the running p2pdma binary to put into the guest")?;
    if !vm::is_static_elf(&exe) {
        bail!(
            "{} is dynamically linked; the lab guest needs the static build (cargo build in this workspace links statically via .cargo/config.toml)",
            exe.display()
        );
    }
    Ok(exe)
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
    let guest_binary = guest_binary()?;
    let kernel = ensure_kernel(&args.kernel, None, args.quiet)?;
    let programs = if args.with_fio {
        vec![which("fio").context("--with-fio: fio is not installed; run `p2pdma lab setup`")?]
    } else {
        Vec::new()
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| default_run_dir(&topology.name));
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

fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The demo's guest script; each step runs the real tool and stops the demo if it fails.
const DEMO_SCRIPT: &str = include_str!("../../../../lab/demo.sh");

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    eprintln!("p2pdma lab demo: a real Linux kernel with CONFIG_PCI_P2PDMA boots in QEMU with two emulated NVMe");
    eprintln!("controllers with Controller Memory Buffers and a RAM-backed p2pmem provider, behind one PCIe");
    eprintln!("switch (topology `fast`); fio runs beside p2pdma for the speed figures.");
    let fio = which("fio")
        .context("the demo compares with fio, which is not installed: run `p2pdma lab setup`")?;
    let kernel = ensure_kernel(&args.kernel.stock_by_default(), None, false)?;
    let catalog = Catalog::load(paths::user_topologies().as_deref(), &[])?;
    let topology = catalog.get("fast")?;
    let out_dir = args.out.unwrap_or_else(|| default_run_dir("demo"));
    let accel = choose_accel(AccelArg::Auto, &kernel);
    let mut request = RunRequest::new(
        topology,
        kernel,
        guest_binary()?,
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

#[derive(Debug, serde::Serialize)]
struct BootFigures {
    topology: String,
    runs: usize,
    accel: Accel,
    boot_seconds_min: f64,
    boot_seconds_median: f64,
    boot_seconds_max: f64,
    guest_uptime_median: f64,
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
    let guest_binary = guest_binary()?;
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
        let mut boots = Vec::new();
        let mut uptimes = Vec::new();
        for _ in 0..args.runs {
            let out_dir = default_run_dir(&format!("bench-{name}"));
            let request = RunRequest {
                command_timeout: Duration::from_secs(60),
                echo: false,
                ..RunRequest::new(
                    topology.clone(),
                    kernel.clone(),
                    guest_binary.clone(),
                    "true".to_owned(),
                    out_dir.clone(),
                    accel,
                )
            };
            let outcome = vm::run(&request)
                .with_context(|| format!("booting {name}"))
                .map_err(|e| Failure::new(Kind::Lab, e))?;
            boots.push(outcome.boot_seconds);
            uptimes.push(outcome.guest_uptime_at_ready);
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        boots.sort_by(f64::total_cmp);
        uptimes.sort_by(f64::total_cmp);
        let f = BootFigures {
            topology: name.clone(),
            runs: args.runs,
            accel,
            boot_seconds_min: boots[0],
            boot_seconds_median: boots[boots.len() / 2],
            boot_seconds_max: boots[boots.len() - 1],
            guest_uptime_median: uptimes[uptimes.len() / 2],
        };
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

/// Finds the PCI function of the NVMe controller whose serial is `serial`.
fn nvme_by_serial(sysfs: &Path, serial: &str) -> anyhow::Result<(String, String, Vec<String>)> {
    let class = sysfs.join("class/nvme");
    let entries = std::fs::read_dir(&class).with_context(|| {
        format!(
            "cannot list {}: is the nvme driver loaded?",
            class.display()
        )
    })?;
    let mut seen = Vec::new();
    for entry in entries.flatten() {
        let ctrl = entry.file_name().to_string_lossy().into_owned();
        let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        let s = s.trim().to_owned();
        if s == serial {
            let device = std::fs::canonicalize(entry.path().join("device"))
                .with_context(|| format!("{ctrl} has no PCI device link"))?;
            let bdf = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut namespaces: Vec<String> = std::fs::read_dir(entry.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.starts_with(&ctrl) && n.len() > ctrl.len() && n[ctrl.len()..].starts_with('n')
                })
                .collect();
            namespaces.sort();
            return Ok((bdf, ctrl, namespaces));
        }
        seen.push(s);
    }
    bail!(
        "no NVMe controller has serial '{serial}' (serials present: {})",
        if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        }
    )
}

fn resolve_function(sysfs: &Path, device: &str) -> anyhow::Result<String> {
    if device.parse::<p2pdma::Bdf>().is_ok() {
        return Ok(device.parse::<p2pdma::Bdf>()?.to_string());
    }
    Ok(nvme_by_serial(sysfs, device)?.0)
}

fn guest(cmd: GuestCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
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
        GuestCommand::Signal { name } => {
            let mut tty = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/ttyS3")
                .context("cannot open /dev/ttyS3, the lab's control channel: `lab guest signal` works only inside a lab guest")?;
            writeln!(tty, "@@signal {name}").context("cannot write to /dev/ttyS3")?;
        }
        GuestCommand::Nvme { serial } => {
            let (bdf, ctrl, namespaces) = nvme_by_serial(&globals.sysfs, &serial)?;
            writeln!(
                output::stdout(),
                "{bdf} /dev/{ctrl} {}",
                namespaces
                    .iter()
                    .map(|n| format!("/dev/{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
        }
        GuestCommand::Unbind { device } => {
            let bdf = resolve_function(&globals.sysfs, &device)?;
            let driver_link = globals
                .sysfs
                .join("bus/pci/devices")
                .join(&bdf)
                .join("driver");
            let driver = std::fs::canonicalize(&driver_link)
                .with_context(|| format!("{bdf} is not bound to a driver"))?;
            std::fs::write(driver.join("unbind"), &bdf)
                .with_context(|| format!("cannot unbind {bdf} from {}", driver.display()))?;
            eprintln!(
                "unbound {bdf} from {}",
                driver.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        GuestCommand::Bind { device } => {
            let bdf = resolve_function(&globals.sysfs, &device)?;
            let bind = globals.sysfs.join("bus/pci/drivers/nvme/bind");
            std::fs::write(&bind, &bdf)
                .with_context(|| format!("cannot bind {bdf} to nvme via {}", bind.display()))?;
            eprintln!("bound {bdf} to nvme");
        }
        GuestCommand::ReadLoop(args) => return read_loop(&args, globals),
        GuestCommand::Hold(args) => return hold(&args, globals),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `lab guest read-loop` counted, printed as one JSON document.
#[derive(Debug, Default, serde::Serialize)]
struct ReadLoopReport {
    provider: String,
    file: PathBuf,
    threads: usize,
    read_size: usize,
    seconds: f64,
    /// O_DIRECT reads issued into p2pmem.
    reads_started: u64,
    /// Reads that completed and held FILE's bytes.
    reads_verified: u64,
    /// Reads that completed with other bytes than FILE's (must be 0).
    reads_mismatched: u64,
    /// Reads that completed short (must be 0: the span lies inside FILE).
    reads_short: u64,
    /// Reads refused because the buffer was revoked (the provider went away): the
    /// library noticed first, or the kernel could not pin the zapped pages (EFAULT).
    reads_revoked: u64,
    /// Reads that completed, but the buffer was revoked before its bytes were checked.
    checks_revoked: u64,
    /// Successful p2pmem allocations (one per thread at start, one after each loss).
    allocations: u64,
    /// Allocations refused because the provider was unbound or being torn down.
    allocations_provider_gone: u64,
    /// Allocations refused by an empty pool (a rebind creates the pool before filling it).
    allocations_pool_empty: u64,
    /// Errors that are none of the above (must be none), the first few of them.
    unexpected: Vec<String>,
    unexpected_count: u64,
    /// The first mismatch: "offset N: byte M differs".
    first_mismatch: Option<String>,
}

/// Counters shared by the read-loop threads.
#[derive(Default)]
struct ReadLoopCounters {
    started: std::sync::atomic::AtomicU64,
    verified: std::sync::atomic::AtomicU64,
    mismatched: std::sync::atomic::AtomicU64,
    short: std::sync::atomic::AtomicU64,
    revoked: std::sync::atomic::AtomicU64,
    checks_revoked: std::sync::atomic::AtomicU64,
    allocations: std::sync::atomic::AtomicU64,
    gone: std::sync::atomic::AtomicU64,
    pool_empty: std::sync::atomic::AtomicU64,
    ready: std::sync::atomic::AtomicUsize,
    unexpected: std::sync::Mutex<(u64, Vec<String>)>,
    first_mismatch: std::sync::Mutex<Option<String>>,
}

impl ReadLoopCounters {
    fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn unexpected(&self, what: String) {
        let mut u = self.unexpected.lock().unwrap_or_else(|e| e.into_inner());
        u.0 += 1;
        if u.1.len() < 10 {
            u.1.push(what);
        }
    }
}

/// A small xorshift generator: the read offsets need to be spread, not unpredictable.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn read_loop(args: &ReadLoopArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::Ordering;

    anyhow::ensure!(
        args.threads > 0 && args.size > 0 && args.span >= args.size,
        "read-loop needs --threads >= 1, --size >= 1 and --span >= --size"
    );
    let mut expected = vec![0u8; args.span];
    std::fs::File::open(&args.file)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut expected))
        .with_context(|| {
            format!(
                "cannot read the first {} bytes of {}",
                args.span,
                args.file.display()
            )
        })?;
    anyhow::ensure!(
        expected.iter().any(|&b| b != 0),
        "the first {} bytes of {} are all zero: fill them with random data first, or a \
         dropped DMA would pass the check",
        args.span,
        args.file.display()
    );
    let counters = ReadLoopCounters::default();
    let slots = (args.span / args.size) as u64;
    let started = std::time::Instant::now();
    let stop = || args.stop_file.exists();

    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for thread in 0..args.threads {
            let (counters, expected, stop) = (&counters, &expected, &stop);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&args.file)
                .with_context(|| format!("cannot open {} with O_DIRECT", args.file.display()))?;
            handles.push(scope.spawn(move || {
                let seed = started.elapsed().as_nanos() as u64;
                let mut rng = (seed ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
                let mut check = vec![0u8; args.size];
                let mut was_ready = false;
                while !stop() {
                    let allocated = p2pdma::p2pmem::Provider::open(&p2pdma::sysfs::SysfsRoot::new(&globals.sysfs), args.provider)
                        .and_then(|p| p.allocate(args.size));
                    let mut buffer = match allocated {
                        Ok(b) => {
                            ReadLoopCounters::bump(&counters.allocations);
                            b
                        }
                        Err(e) => {
                            use p2pdma::p2pmem::P2pmemError as E;
                            match e {
                                E::NoP2pmem { .. } | E::ProviderGone { .. } => {
                                    ReadLoopCounters::bump(&counters.gone)
                                }
                                // The pool or its attributes vanish mid-way through the
                                // allocation when the unbind wins the race.
                                E::Io { ref source, .. }
                                    if matches!(
                                        source.raw_os_error(),
                                        Some(libc::ENODEV | libc::ENOENT | libc::ENXIO)
                                    ) =>
                                {
                                    ReadLoopCounters::bump(&counters.gone)
                                }
                                E::PoolExhausted { .. } => ReadLoopCounters::bump(&counters.pool_empty),
                                other => counters.unexpected(format!("allocate: {other:#}")),
                            }
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    // Read until the buffer is lost.
                    while !stop() {
                        let offset = next_random(&mut rng) % slots * args.size as u64;
                        ReadLoopCounters::bump(&counters.started);
                        match buffer.pread(&file, offset, 0, args.size) {
                            Ok(n) if n == args.size => {}
                            Ok(n) => {
                                ReadLoopCounters::bump(&counters.short);
                                counters.unexpected(format!("read at {offset}: {n} of {} bytes", args.size));
                                continue;
                            }
                            Err(p2pdma::p2pmem::P2pmemError::Revoked { .. }) => {
                                ReadLoopCounters::bump(&counters.revoked);
                                break;
                            }
                            Err(e) => {
                                counters.unexpected(format!("read at {offset}: {}", anyhow::Error::from(e).chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")));
                                break;
                            }
                        }
                        match buffer.read_into(0, &mut check) {
                            Ok(()) => {}
                            Err(p2pdma::p2pmem::P2pmemError::Revoked { .. }) => {
                                ReadLoopCounters::bump(&counters.checks_revoked);
                                break;
                            }
                            Err(e) => {
                                counters.unexpected(format!("checking the read at {offset}: {e:#}"));
                                break;
                            }
                        }
                        let want = &expected[offset as usize..offset as usize + args.size];
                        if let Some(i) = (0..args.size).find(|&i| check[i] != want[i]) {
                            ReadLoopCounters::bump(&counters.mismatched);
                            let mut first = counters.first_mismatch.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| {
                                format!("read at offset {offset}: byte {i} is {:#04x}, {} holds {:#04x}", check[i], args.file.display(), want[i])
                            });
                        } else {
                            ReadLoopCounters::bump(&counters.verified);
                            if !was_ready {
                                was_ready = true;
                                counters.ready.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
        // Say when every thread has done a verified read, so the disruption starts
        // while the loop runs.
        if let Some(ready) = &args.ready_file {
            while counters.ready.load(Ordering::Relaxed) < args.threads && !stop() {
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(ready, "ready\n")
                .with_context(|| format!("cannot write {}", ready.display()))?;
        }
        for handle in handles {
            if handle.join().is_err() {
                counters.unexpected("a reading thread panicked".into());
            }
        }
        Ok(())
    })?;

    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (unexpected_count, unexpected) = std::mem::take(
        &mut *counters
            .unexpected
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let report = ReadLoopReport {
        provider: args.provider.to_string(),
        file: args.file.clone(),
        threads: args.threads,
        read_size: args.size,
        seconds: started.elapsed().as_secs_f64(),
        reads_started: load(&counters.started),
        reads_verified: load(&counters.verified),
        reads_mismatched: load(&counters.mismatched),
        reads_short: load(&counters.short),
        reads_revoked: load(&counters.revoked),
        checks_revoked: load(&counters.checks_revoked),
        allocations: load(&counters.allocations),
        allocations_provider_gone: load(&counters.gone),
        allocations_pool_empty: load(&counters.pool_empty),
        unexpected,
        unexpected_count,
        first_mismatch: counters
            .first_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    };
    output::print_json(&report, false)?;
    Ok(
        if report.reads_mismatched == 0 && report.reads_short == 0 && report.unexpected_count == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The byte a held buffer holds at `offset`: not zero, and different per buffer.
fn hold_pattern(buffer: usize, offset: usize) -> u8 {
    ((offset.wrapping_mul(31) ^ buffer.wrapping_mul(97)) % 251 + 1) as u8
}

fn hold(args: &HoldArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let provider = p2pdma::p2pmem::Provider::open(
        &p2pdma::sysfs::SysfsRoot::new(&globals.sysfs),
        args.provider,
    )?;
    let mut held = Vec::new();
    for index in 0..args.buffers {
        let mut buffer = provider.allocate(args.size)?;
        let pattern: Vec<u8> = (0..buffer.len()).map(|o| hold_pattern(index, o)).collect();
        buffer.write_from(0, &pattern)?;
        held.push(buffer);
    }
    std::fs::write(&args.ready_file, "held\n")
        .with_context(|| format!("cannot write {}", args.ready_file.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !args.release_file.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut intact = Vec::new();
    for (index, buffer) in held.iter().enumerate() {
        let mut actual = vec![0u8; buffer.len()];
        buffer.read_into(0, &mut actual)?;
        intact.push(
            actual
                .iter()
                .enumerate()
                .all(|(o, &b)| b == hold_pattern(index, o)),
        );
    }
    let all_intact = intact.iter().all(|&i| i);
    let bytes: usize = held.iter().map(|b| b.len()).sum();
    if args.json {
        output::print_json(
            &serde_json::json!({
                "provider": args.provider.to_string(),
                "buffers": held.len(),
                "bytes": bytes,
                "intact": intact,
            }),
            false,
        )?;
    } else {
        writeln!(
            output::stdout(),
            "held {bytes} bytes of p2pmem from {} in {} buffers; patterns {}",
            args.provider,
            held.len(),
            if all_intact { "intact" } else { "CHANGED" }
        )?;
    }
    Ok(if all_intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_patterns_are_never_zero_and_differ_between_buffers() {
        for offset in 0..4096 {
            assert_ne!(hold_pattern(0, offset), 0);
            assert_ne!(hold_pattern(3, offset), 0);
        }
        let a: Vec<u8> = (0..4096).map(|o| hold_pattern(0, o)).collect();
        let b: Vec<u8> = (0..4096).map(|o| hold_pattern(1, o)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn read_offsets_spread_over_the_span() {
        let mut state = 0x1234_5678_9abc_def1;
        let slots = 1024;
        let hit: std::collections::HashSet<u64> =
            (0..4096).map(|_| next_random(&mut state) % slots).collect();
        assert!(hit.len() > 900, "only {} of {slots} slots hit", hit.len());
    }

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
