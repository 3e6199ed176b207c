//! `p2pdma lab ...`: set up the host, build the kernel, boot topologies, run the demo,
//! and the small helpers the guest side uses. The work is `p2pdma_lab`'s (`launch`,
//! `obtain`, `host`, `guest`); `args` holds the arguments and the requests they become,
//! this module calls the library and prints, `guest` the same for `lab guest ...`.

use std::io::Write;
use std::process::ExitCode;

use p2pdma_lab::launch::{self, BootBench, CheckStartError, LaunchError};
use p2pdma_lab::obtain;
use p2pdma_lab::spec::Catalog;
use p2pdma_lab::vm::RunOutcome;
use p2pdma_lab::{host, paths};

use crate::exit::{Kind, LAB_FAILURE};
use crate::output::{self, Failure};
use crate::progress::BuildProgress;
use crate::Globals;

mod args;
mod guest;

pub use args::LabCommand;
use args::{BenchArgs, CheckArgs, DemoArgs, RunArgs, SetupArgs, TopologiesArgs};

pub fn run(cmd: LabCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Setup(args) => setup(args),
        LabCommand::Kernel(args) => {
            let request = args.request()?;
            let kernel = obtain::obtain(&request, &mut BuildProgress::new(globals.quiet))?.image;
            if args.print_path {
                writeln!(output::stdout(), "{}", kernel.display())?;
            } else {
                writeln!(output::stdout(), "lab kernel: {}", kernel.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Topologies(args) => topologies(args),
        LabCommand::Run(args) => lab_run(args, globals.quiet),
        LabCommand::Demo(args) => demo(args),
        LabCommand::Bench(args) => bench(args),
        LabCommand::Check(args) => check(args, globals),
        LabCommand::Guest(g) => guest::run(g, globals),
    }
}

fn setup(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let reqs = host::check();
    for r in &reqs {
        writeln!(output::stdout(), "{}", r.status_line())?;
    }
    let missing = host::missing_packages(&reqs);
    if missing.is_empty() {
        writeln!(output::stdout(), "the lab has everything it needs")?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.check {
        let list = missing.join(" ");
        writeln!(output::stdout(), "missing Debian packages: {list}")?;
        return Ok(ExitCode::FAILURE);
    }
    let plan = host::install_missing(&missing)?;
    if !plan.backports.is_empty() {
        writeln!(
            output::stdout(),
            "from backports (bookworm's versions would replace packages already here): {}",
            plan.backports.join(" ")
        )?;
    }
    writeln!(output::stdout(), "installed: {}", missing.join(" "))?;
    Ok(ExitCode::SUCCESS)
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

/// A lab failure (exit 125) saying "lab: ...".
fn lab_failure(err: impl Into<anyhow::Error>) -> anyhow::Error {
    Failure::new(Kind::Lab, err.into().context("lab")).into()
}

/// The guest command's status as ours (a status that does not fit is a lab failure).
fn guest_status(outcome: &RunOutcome) -> ExitCode {
    ExitCode::from(u8::try_from(outcome.status).unwrap_or(LAB_FAILURE))
}

fn lab_run(args: RunArgs, quiet: bool) -> anyhow::Result<ExitCode> {
    let quiet = args.quiet || quiet;
    let request = args.request();
    // Every failure of `lab run` is the lab's: the guest command's status is its own.
    let run = launch::run(&request, &mut BuildProgress::new(quiet)).map_err(lab_failure)?;
    let outcome = &run.outcome;
    if !quiet {
        for w in &outcome.warnings {
            eprintln!("lab: warning: {w}");
        }
        eprintln!("lab: {}", run.summary());
    }
    let _ = std::io::stdout().flush();
    Ok(guest_status(outcome))
}

/// A launch error as the binary reports it: boot failures are the lab's (exit 125).
fn launch_error(err: LaunchError) -> anyhow::Error {
    if err.is_boot_failure() {
        lab_failure(err)
    } else {
        err.into()
    }
}

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    eprint!("{}", launch::DEMO_INTRO);
    let request = args.request();
    let outcome = launch::demo(&request, &mut BuildProgress::new(false)).map_err(launch_error)?;
    eprintln!("{}", launch::demo_summary(&outcome));
    Ok(guest_status(&outcome))
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let request = args.request();
    let bench =
        BootBench::prepare(&request, &mut BuildProgress::new(false)).map_err(launch_error)?;
    if !args.json {
        write!(output::stdout(), "{}", p2pdma_lab::bench::table_header())?;
    }
    let mut figures = Vec::new();
    for name in bench.topologies() {
        let f = bench.boot(name).map_err(|e| match e {
            // A failed boot is the lab's (exit 125): "booting NAME: why".
            LaunchError::Boot { .. } => Failure::new(Kind::Lab, e).into(),
            e => anyhow::Error::from(e),
        })?;
        if !args.json {
            writeln!(output::stdout(), "{}", f.table_row())?;
        }
        figures.push(f);
    }
    if args.json {
        output::print_json(&figures, true)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let request = args.request(globals.kernel_release.clone());
    let quiet = globals.quiet;
    let mut progress = |line: &str| {
        if !quiet {
            eprintln!("lab check: {line}");
        }
    };
    let report = launch::check(&request, &mut BuildProgress::new(quiet), &mut progress).map_err(
        |e| match e {
            CheckStartError::Kernel(e) => Failure::new(
                Kind::Lab,
                anyhow::Error::from(e).context("lab check: the kernel"),
            )
            .into(),
            CheckStartError::Request(e) => anyhow::Error::from(e),
        },
    )?;
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
