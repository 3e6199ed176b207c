//! `p2pdma lab bench`: boot-to-command time of a topology over several boots.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::paths;
use crate::spec::Topology;
use crate::vm::{self, Accel, RunRequest, VmError};

/// Boot times of one topology: min/median/max over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootFigures {
    /// The topology.
    pub topology: String,
    /// Boots made.
    pub runs: usize,
    /// The accelerator.
    pub accel: Accel,
    /// Fastest boot: QEMU start until the guest runs the command.
    pub boot_seconds_min: f64,
    /// Median boot.
    pub boot_seconds_median: f64,
    /// Slowest boot.
    pub boot_seconds_max: f64,
    /// The guest's median uptime when it was ready.
    pub guest_uptime_median: f64,
}

/// The head of `lab bench`'s table: what is measured, then the column names (two lines,
/// each ending in a newline).
pub fn table_header() -> String {
    format!(
        "boot-to-command time: QEMU start until the guest has every NVMe namespace and runs the command\n{:<14} {:>4} {:>8} {:>8} {:>8} {:>14}\n",
        "topology", "runs", "min s", "median s", "max s", "guest uptime s"
    )
}

impl BootFigures {
    /// The figures as one row of [`table_header`]'s table (no newline).
    pub fn table_row(&self) -> String {
        format!(
            "{:<14} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>14.2}",
            self.topology,
            self.runs,
            self.boot_seconds_min,
            self.boot_seconds_median,
            self.boot_seconds_max,
            self.guest_uptime_median
        )
    }

    /// Figures from the boot and uptime seconds of each run (`runs` > 0).
    pub fn from_samples(
        topology: &str,
        accel: Accel,
        mut boots: Vec<f64>,
        mut uptimes: Vec<f64>,
    ) -> BootFigures {
        boots.sort_by(f64::total_cmp);
        uptimes.sort_by(f64::total_cmp);
        BootFigures {
            topology: topology.to_owned(),
            runs: boots.len(),
            accel,
            boot_seconds_min: boots[0],
            boot_seconds_median: boots[boots.len() / 2],
            boot_seconds_max: boots[boots.len() - 1],
            guest_uptime_median: uptimes[uptimes.len() / 2],
        }
    }
}

/// Boots `topology` `runs` times (at least once) running `true`, and returns the figures.
pub fn boot_times(
    topology: &Topology,
    kernel: &Path,
    guest_binary: &Path,
    accel: Accel,
    runs: usize,
) -> Result<BootFigures, VmError> {
    let mut boots = Vec::new();
    let mut uptimes = Vec::new();
    for _ in 0..runs.max(1) {
        let out_dir = paths::run_dir(&format!("bench-{}", topology.name));
        let request = RunRequest {
            command_timeout: Duration::from_secs(60),
            echo: false,
            ..RunRequest::new(
                topology.clone(),
                kernel.to_owned(),
                guest_binary.to_owned(),
                "true".to_owned(),
                out_dir.clone(),
                accel,
            )
        };
        let outcome = vm::run(&request)?;
        boots.push(outcome.boot_seconds);
        uptimes.push(outcome.guest_uptime_at_ready);
        let _ = std::fs::remove_dir_all(&out_dir);
    }
    Ok(BootFigures::from_samples(
        &topology.name,
        accel,
        boots,
        uptimes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_min_median_max_of_the_samples() {
        let f = BootFigures::from_samples(
            "switch",
            Accel::Tcg,
            vec![3.0, 1.0, 2.0],
            vec![0.9, 0.7, 0.8],
        );
        assert_eq!(
            (
                f.runs,
                f.boot_seconds_min,
                f.boot_seconds_median,
                f.boot_seconds_max,
                f.guest_uptime_median
            ),
            (3, 1.0, 2.0, 3.0, 0.8)
        );
    }

    #[test]
    fn a_row_lines_up_under_the_header() {
        let f = BootFigures::from_samples(
            "switch",
            Accel::Tcg,
            vec![13.25, 11.5, 12.0],
            vec![4.0, 3.5, 3.75],
        );
        let row = f.table_row();
        assert_eq!(
            row,
            "switch            3    11.50    12.00    13.25           3.75"
        );
        let header = table_header();
        let columns = header.lines().nth(1).unwrap();
        assert_eq!(columns.len(), row.len(), "{columns}\n{row}");
        assert!(columns.starts_with("topology       runs"), "{columns}");
        assert!(header.starts_with("boot-to-command time: "), "{header}");
        assert!(header.ends_with("guest uptime s\n"), "{header}");
    }
}
