//! The lab kernel's fetch and build progress as the binary shows it: a spinner on a
//! terminal, stage lines otherwise (CI logs), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use p2pdma_lab::kernel::BuildEvent;
use p2pdma_lab::obtain::KernelProgress;

/// Kernel build progress: a spinner on a terminal, stage lines otherwise (CI logs).
pub struct BuildProgress {
    bar: Option<ProgressBar>,
    quiet: bool,
    objects: u64,
}

impl BuildProgress {
    /// Progress that says nothing when `quiet`.
    pub fn new(quiet: bool) -> BuildProgress {
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
