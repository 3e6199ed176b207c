//! fio with the same shape: the command line (pure), running it, and reading its JSON
//! output (`--output-format=json`: per job and direction `io_bytes`, `bw`, `iops`,
//! `runtime`, `clat_ns`; per job `usr_cpu`, `sys_cpu`, `job_runtime`).
//!
//! In p2p mode fio's buffers are the same provider's memory:
//! `--mem=mmapshared:/sys/bus/pci/devices/<BDF>/p2pmem/allocate`. fio opens that file,
//! skips the `ftruncate` it does for plain `mmap` files, and maps it `MAP_SHARED` at
//! offset 0, which is exactly what the kernel's p2pmem `allocate` file accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::cpu::CpuTimes;
use super::report::{Clat, RunFigures};
use super::stats::PERCENTILES;
use super::BenchError;

/// The fio program: `$P2PDMA_FIO`, else `fio` on `PATH`.
pub fn locate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("P2PDMA_FIO") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("fio"))
        .find(|p| p.is_file())
}

/// `fio --version`.
pub fn version(fio: &Path) -> Option<String> {
    let out = Command::new(fio).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|v| !v.is_empty())
}

/// One fio job section (a group of `numjobs` clones).
#[derive(Debug, Clone, PartialEq)]
pub struct FioJob {
    /// Its name (and the key to find it in the output).
    pub name: String,
    /// `read`, `write`, `randread` or `randwrite`.
    pub rw: &'static str,
    /// The device or file.
    pub filename: PathBuf,
    /// Bytes per request.
    pub bs: u64,
    /// Requests in flight per clone.
    pub iodepth: u32,
    /// Clones.
    pub numjobs: u32,
    /// Bytes per clone; clone k starts at k * size.
    pub size: u64,
    /// Time-based runs.
    pub runtime: Option<Duration>,
    /// The `mem=` option: `None` for fio's default (host memory).
    pub mem: Option<String>,
}

/// The `mem=` value that puts fio's buffers in a provider's p2pmem.
pub fn p2pmem_option(sysfs: &crate::sysfs::SysfsRoot, bdf: crate::Bdf) -> String {
    format!(
        "mmapshared:{}",
        sysfs.p2pmem_dir(bdf).join("allocate").display()
    )
}

/// The arguments of one fio invocation running `jobs` concurrently, each its own
/// reporting group.
pub fn command_args(jobs: &[FioJob]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--output-format=json",
        "--group_reporting",
        "--percentile_list=50:90:99:99.9",
        "--ioengine=io_uring",
        "--direct=1",
    ]
    .map(String::from)
    .to_vec();
    for (i, job) in jobs.iter().enumerate() {
        args.push(format!("--name={}", job.name));
        if i > 0 {
            args.push("--new_group".into());
        }
        args.push(format!("--filename={}", job.filename.display()));
        args.push(format!("--rw={}", job.rw));
        args.push(format!("--bs={}", job.bs));
        args.push(format!("--iodepth={}", job.iodepth));
        args.push(format!("--numjobs={}", job.numjobs));
        args.push(format!("--size={}", job.size));
        args.push(format!("--offset_increment={}", job.size));
        if let Some(t) = job.runtime {
            args.push("--time_based".into());
            args.push(format!("--runtime={}ms", t.as_millis().max(1)));
        }
        if let Some(mem) = &job.mem {
            args.push(format!("--mem={mem}"));
        }
    }
    args
}

/// One direction of one group from fio's output.
#[derive(Debug, Clone, PartialEq)]
pub struct FioFigures {
    /// Bytes moved.
    pub io_bytes: u64,
    /// Runtime of the direction, ms.
    pub runtime_ms: u64,
    /// Completion latency.
    pub clat: Option<Clat>,
    /// CPU time of the group's clones (from usr_cpu/sys_cpu and job_runtime).
    pub cpu: CpuTimes,
}

impl FioFigures {
    /// As [`RunFigures`].
    pub fn figures(&self, bs: u64) -> RunFigures {
        RunFigures::new(
            self.io_bytes,
            bs,
            Duration::from_millis(self.runtime_ms),
            self.clat.clone(),
            self.cpu,
        )
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Reads the group named `name`, direction `dir` ("read" or "write"), from fio's JSON.
pub fn parse(output: &str, name: &str, dir: &str) -> Result<FioFigures, String> {
    // fio may print warnings before the document.
    let start = output
        .find("{\n")
        .or_else(|| output.find('{'))
        .ok_or("no JSON document in fio's output")?;
    let doc: Value = serde_json::from_str(&output[start..])
        .map_err(|e| format!("fio's JSON output does not parse: {e}"))?;
    let job = doc
        .get("jobs")
        .and_then(Value::as_array)
        .and_then(|jobs| {
            jobs.iter()
                .find(|j| j.get("jobname").and_then(Value::as_str) == Some(name))
        })
        .ok_or_else(|| format!("fio's output has no job named {name}"))?;
    let d = job
        .get(dir)
        .ok_or_else(|| format!("fio's job {name} has no {dir} figures"))?;
    let io_bytes = num(d, "io_bytes").ok_or("io_bytes missing")? as u64;
    let runtime_ms = num(d, "runtime").ok_or("runtime missing")? as u64;
    let clat = d.get("clat_ns").and_then(|c| {
        let percentile = c.get("percentile")?;
        Some(Clat {
            min: num(c, "min")? as u64,
            max: num(c, "max")? as u64,
            mean: num(c, "mean")?,
            percentile: PERCENTILES
                .iter()
                .filter_map(|(_, key)| {
                    Some(((*key).to_owned(), percentile.get(*key)?.as_f64()? as u64))
                })
                .collect(),
        })
    });
    // usr_cpu/sys_cpu are percentages of the clones' summed run time (job_runtime).
    let job_runtime_ms = num(job, "job_runtime").unwrap_or(runtime_ms as f64);
    let cpu = |pct: f64| Duration::from_secs_f64((pct / 100.0 * job_runtime_ms / 1000.0).max(0.0));
    Ok(FioFigures {
        io_bytes,
        runtime_ms,
        clat: clat.filter(|c| !c.percentile.is_empty()),
        cpu: CpuTimes {
            user: cpu(num(job, "usr_cpu").unwrap_or(0.0)),
            system: cpu(num(job, "sys_cpu").unwrap_or(0.0)),
        },
    })
}

/// Runs fio with `jobs` and returns its standard output.
pub fn run(fio: &Path, jobs: &[FioJob]) -> Result<String, BenchError> {
    let args = command_args(jobs);
    let out = Command::new(fio)
        .args(&args)
        .output()
        .map_err(|source| BenchError::FioSpawn {
            fio: fio.to_owned(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let why = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('{'))
            .unwrap_or("no message")
            .to_owned();
        return Err(BenchError::FioFailed {
            command: format!("{} {}", fio.display(), args.join(" ")),
            status: out.status.to_string(),
            why,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "copy-read",
      "groupid" : 0,
      "job_runtime" : 2000,
      "usr_cpu" : 10.0,
      "sys_cpu" : 20.0,
      "read" : {
        "io_bytes" : 268435456, "bw" : 262144, "iops" : 256.0, "runtime" : 1000,
        "clat_ns" : { "min" : 1000, "max" : 9000000, "mean" : 3900000.5,
          "percentile" : { "50.000000" : 3900000, "90.000000" : 5000000,
                           "99.000000" : 8000000, "99.900000" : 8900000 } }
      },
      "write" : { "io_bytes" : 0, "bw" : 0, "iops" : 0.0, "runtime" : 0,
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0 } }
    }
  ]
}"#;

    #[test]
    fn fio_json_is_read_in_fio_units() {
        let f = parse(OUTPUT, "copy-read", "read").unwrap();
        assert_eq!(f.io_bytes, 256 << 20);
        assert_eq!(f.runtime_ms, 1000);
        let clat = f.clat.as_ref().unwrap();
        assert_eq!(clat.percentile["99.900000"], 8_900_000);
        assert_eq!(f.cpu.user, Duration::from_millis(200));
        assert_eq!(f.cpu.system, Duration::from_millis(400));
        let figures = f.figures(1 << 20);
        assert!((figures.bw_mib_s - 256.0).abs() < 1e-9);
        assert!((figures.iops - 256.0).abs() < 1e-9);
        // An idle direction has no percentiles.
        assert_eq!(parse(OUTPUT, "copy-read", "write").unwrap().clat, None);
        assert!(parse(OUTPUT, "nope", "read").is_err());
        assert!(parse("fio: no such file", "x", "read").is_err());
    }

    #[test]
    fn the_command_line_has_the_same_shape_and_p2pmem_buffers() {
        let mem = p2pmem_option(
            &crate::sysfs::SysfsRoot::default(),
            "0000:03:00.0".parse().unwrap(),
        );
        assert_eq!(
            mem,
            "mmapshared:/sys/bus/pci/devices/0000:03:00.0/p2pmem/allocate"
        );
        let read = FioJob {
            name: "copy-read".into(),
            rw: "read",
            filename: "/dev/nvme0n1".into(),
            bs: 1 << 20,
            iodepth: 4,
            numjobs: 2,
            size: 64 << 20,
            runtime: None,
            mem: Some(mem),
        };
        let write = FioJob {
            name: "copy-write".into(),
            rw: "write",
            filename: "/dev/nvme1n1".into(),
            runtime: Some(Duration::from_secs(5)),
            ..read.clone()
        };
        let args = command_args(&[read, write]);
        let first_job = args.iter().position(|a| a.starts_with("--name=")).unwrap();
        for global in ["--ioengine=io_uring", "--direct=1", "--output-format=json"] {
            let at = args.iter().position(|a| a == global).unwrap();
            assert!(at < first_job, "{global} must be global");
        }
        let second = args.iter().position(|a| a == "--name=copy-write").unwrap();
        assert_eq!(args[second + 1], "--new_group");
        for a in [
            "--bs=1048576",
            "--iodepth=4",
            "--numjobs=2",
            "--size=67108864",
            "--offset_increment=67108864",
            "--mem=mmapshared:/sys/bus/pci/devices/0000:03:00.0/p2pmem/allocate",
        ] {
            assert_eq!(args.iter().filter(|x| *x == a).count(), 2, "{a}");
        }
        assert!(args[second..].contains(&"--runtime=5000ms".to_owned()));
        assert!(!args[..second].contains(&"--time_based".to_owned()));
    }
}
