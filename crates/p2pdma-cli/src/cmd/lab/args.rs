//! The arguments of `p2pdma lab ...` (clap) and the library requests they become.

use std::path::PathBuf;
use std::time::Duration;

use p2pdma_lab::kernel::Flavour;
use p2pdma_lab::launch::{self, AccelChoice};
use p2pdma_lab::obtain::{self, FlavourChoice};
use p2pdma_lab::vm::Fault;

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
    Guest(super::guest::GuestCommand),
}

/// `p2pdma lab setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub(super) check: bool,
}

/// Where the kernel comes from (shared by `kernel`, `run` and `demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct KernelChoice {
    /// Kernel source: a tree or a tarball (default: the --release's Debian source).
    #[arg(long, value_name = "DIR|TARBALL")]
    pub(super) source: Option<PathBuf>,
    /// Which kernel release: 6.12 (Debian bookworm's linux-source-6.12) or 7.2 (Debian
    /// sid's linux-source-7.2, or its stock kernel with --flavour stock; fetched once into
    /// the cache through a private apt configuration). Default: 6.12, or 7.2 for the stock
    /// kernel. --source and --kernel take precedence over it.
    #[arg(long, value_name = "RELEASE", env = "P2PDMA_LAB_RELEASE")]
    pub(super) release: Option<String>,
    /// Which kernel: standard, debug or no-p2pdma (built by the lab from source), or stock (the
    /// distribution's own kernel, Debian sid's 7.2 image and modules, downloaded, not
    /// built). Default: standard; `lab demo` boots the stock kernel.
    #[arg(long, value_enum, env = "P2PDMA_LAB_FLAVOUR")]
    pub(super) flavour: Option<FlavourArg>,
    /// Boot this bzImage instead of the cached lab kernel.
    #[arg(long, value_name = "BZIMAGE", env = "P2PDMA_LAB_KERNEL", conflicts_with_all = ["source", "flavour"])]
    pub(super) kernel: Option<PathBuf>,
}

impl From<&KernelChoice> for obtain::KernelChoice {
    fn from(c: &KernelChoice) -> Self {
        obtain::KernelChoice {
            image: c.kernel.clone(),
            flavour: c.flavour.map(|f| match f {
                FlavourArg::Standard => FlavourChoice::Lab(Flavour::Standard),
                FlavourArg::Debug => FlavourChoice::Lab(Flavour::Debug),
                FlavourArg::NoP2pdma => FlavourChoice::Lab(Flavour::NoP2pdma),
                FlavourArg::Stock => FlavourChoice::Stock,
            }),
            release: c.release.clone(),
            source: c.source.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FlavourArg {
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
    pub(super) choice: KernelChoice,
    /// Parallel compile jobs (default: the number of CPUs).
    #[arg(long)]
    pub(super) jobs: Option<usize>,
    /// Print only the path of the image.
    #[arg(long)]
    pub(super) print_path: bool,
}

/// `p2pdma lab topologies`.
#[derive(Debug, clap::Args)]
pub struct TopologiesArgs {
    /// Also read topologies from this file (same schema as lab/topologies.toml).
    #[arg(long = "topologies", value_name = "FILE")]
    pub(super) files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// `p2pdma lab run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology to boot (see `p2pdma lab topologies`).
    #[arg(long, short)]
    pub(super) topology: String,
    /// Also read topologies from this file.
    #[arg(long = "topologies", value_name = "FILE")]
    pub(super) topology_files: Vec<PathBuf>,
    #[command(flatten)]
    pub(super) kernel: KernelChoice,
    /// Extra kernel command line argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub(super) kernel_args: Vec<String>,
    /// Copy a host file or directory into the guest (HOST or HOST:GUEST; default guest
    /// path /root/<name>).
    #[arg(long = "file", value_name = "HOST[:GUEST]")]
    pub(super) files: Vec<String>,
    /// Put fio (with its libraries) into the guest.
    #[arg(long)]
    pub(super) with_fio: bool,
    /// Copy this guest path back into OUT/fetched after the command (repeatable).
    #[arg(long, value_name = "GUEST_PATH")]
    pub(super) fetch: Vec<String>,
    /// Run directory for logs, disks and fetched files (default: a new one under the
    /// system temp dir).
    #[arg(long, value_name = "DIR")]
    pub(super) out: Option<PathBuf>,
    /// Seconds the guest may take to boot.
    #[arg(long, default_value_t = 90)]
    pub(super) boot_timeout: u64,
    /// Seconds the command may run.
    #[arg(long, default_value_t = 600)]
    pub(super) timeout: u64,
    /// Inject a fault from the host: ACTION@signal:NAME (when the guest runs
    /// `p2pdma lab guest signal NAME`) or ACTION@SECONDSs after boot. ACTION is
    /// device_del:ID (hot removal of an NVMe controller or RAM provider) or
    /// throttle:NVME_ID=BYTES_PER_SEC (QEMU I/O throttling of that controller's drive,
    /// so its commands stay in flight for seconds; 0 lifts it).
    #[arg(long = "fault", value_name = "FAULT")]
    pub(super) faults: Vec<Fault>,
    /// QEMU accelerator; auto uses KVM only where a probe boot shows it works.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub(super) accel: AccelArg,
    /// Keep the disk images in the run directory.
    #[arg(long)]
    pub(super) keep_disks: bool,
    /// Write the run's facts (timings, status, logs) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(super) report: Option<PathBuf>,
    /// Say nothing but the guest's output and errors (the global --quiet, -q).
    #[arg(skip)]
    pub(super) quiet: bool,
    /// The shell command to run in the guest (joined with spaces, run by busybox sh).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(super) command: Vec<String>,
}

/// `p2pdma lab demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub(super) kernel: KernelChoice,
    /// Run directory (default: a new one under the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub(super) out: Option<PathBuf>,
}

/// `p2pdma lab bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Topologies to boot (default: all).
    #[arg(long = "topology", short)]
    pub(super) topologies: Vec<String>,
    /// Boots per topology.
    #[arg(long, default_value_t = 5)]
    pub(super) runs: usize,
    #[command(flatten)]
    pub(super) kernel: KernelChoice,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

/// `p2pdma lab check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub(super) kernel: KernelChoice,
    /// Parallel compile jobs when the kernel must be built (default: the number of CPUs).
    #[arg(long)]
    pub(super) jobs: Option<usize>,
    /// Boot only these topologies (repeatable; default: every shipped one).
    #[arg(long = "topology", short)]
    pub(super) topologies: Vec<String>,
    /// Also read topologies from this file (checked too when no --topology is given).
    #[arg(long = "topologies", value_name = "FILE")]
    pub(super) topology_files: Vec<PathBuf>,
    /// Leave out the teardown scenarios (unbind and hot removal mid-copy).
    #[arg(long)]
    pub(super) no_scenarios: bool,
    /// Run directory for the boots' logs (default: a new one under the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub(super) out: Option<PathBuf>,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub(super) json: bool,
}

impl From<AccelArg> for AccelChoice {
    fn from(a: AccelArg) -> Self {
        match a {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        }
    }
}

impl KernelArgs {
    /// The library's kernel request.
    pub(super) fn request(&self) -> Result<obtain::KernelRequest, obtain::ObtainError> {
        obtain::KernelChoice::from(&self.choice).request(self.jobs)
    }
}

impl RunArgs {
    /// The library's request.
    pub(super) fn request(self) -> launch::LabRun {
        launch::LabRun {
            topology: self.topology,
            topology_files: self.topology_files,
            kernel: (&self.kernel).into(),
            kernel_args: self.kernel_args,
            files: self.files,
            with_fio: self.with_fio,
            fetch: self.fetch,
            out: self.out,
            boot_timeout: Duration::from_secs(self.boot_timeout),
            command_timeout: Duration::from_secs(self.timeout),
            faults: self.faults,
            accel: self.accel.into(),
            keep_disks: self.keep_disks,
            report: self.report,
            command: self.command.join(" "),
        }
    }
}

impl DemoArgs {
    /// The library's request.
    pub(super) fn request(self) -> launch::Demo {
        launch::Demo {
            kernel: (&self.kernel).into(),
            out: self.out,
        }
    }
}

impl BenchArgs {
    /// The library's request.
    pub(super) fn request(&self) -> launch::BootBenchRequest {
        launch::BootBenchRequest {
            topologies: self.topologies.clone(),
            runs: self.runs,
            kernel: (&self.kernel).into(),
        }
    }
}

impl CheckArgs {
    /// The library's request, judging by `rules_release`'s rules (`--kernel-release`).
    pub(super) fn request(&self, rules_release: Option<String>) -> launch::CheckOptions {
        launch::CheckOptions {
            kernel: (&self.kernel).into(),
            jobs: self.jobs,
            topologies: self.topologies.clone(),
            topology_files: self.topology_files.clone(),
            scenarios: !self.no_scenarios,
            rules_release,
            out: self.out.clone(),
        }
    }
}
