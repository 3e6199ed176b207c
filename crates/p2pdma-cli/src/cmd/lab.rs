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
    /// Build the lab kernel (cached outside the repository; a second call returns at once).
    Kernel(KernelArgs),
    /// List the topologies (shipped and your own).
    Topologies(TopologiesArgs),
    /// Boot a topology, run a shell command in the guest, return its status and output.
    Run(RunArgs),
    /// The tour for a newcomer without hardware: boot `switch` and show P2P at work.
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
    #[arg(long, value_name = "DIR|TARBALL", conflicts_with = "release")]
    source: Option<PathBuf>,
    /// Which kernel release the lab builds: 6.12 (Debian bookworm's linux-source-6.12) or
    /// 7.2 (Debian sid's linux-source-7.2, fetched once into the cache through a private
    /// apt configuration).
    #[arg(
        long,
        value_name = "RELEASE",
        default_value = "6.12",
        env = "P2PDMA_LAB_RELEASE"
    )]
    release: String,
    /// Which kernel configuration.
    #[arg(long, value_enum, default_value_t = FlavourArg::Standard)]
    flavour: FlavourArg,
    /// Boot this bzImage instead of the cached lab kernel.
    #[arg(long, value_name = "BZIMAGE", env = "P2PDMA_LAB_KERNEL", conflicts_with_all = ["source", "flavour", "release"])]
    kernel: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FlavourArg {
    Standard,
    Debug,
}

impl From<FlavourArg> for Flavour {
    fn from(f: FlavourArg) -> Flavour {
        match f {
            FlavourArg::Standard => Flavour::Standard,
            FlavourArg::Debug => Flavour::Debug,
        }
    }
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
    let source = match &choice.source {
        Some(path) => KernelSource::from_path(path)?,
        None => {
            let release = LabRelease::named(&choice.release)?;
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
    let flavour: Flavour = choice.flavour.into();
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
        if !self.quiet {
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
    let kernel = ensure_kernel(&args.kernel, None, false)?;
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
    }
    Ok(ExitCode::SUCCESS)
}
