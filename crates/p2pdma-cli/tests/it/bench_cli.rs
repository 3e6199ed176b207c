//! `p2pdma bench` on the host, without a VM: bad parameters give one-line errors and a
//! non-zero exit before anything is opened; host-memory runs on regular files (real
//! io_uring, O_DIRECT) report what they moved. P2P runs are tested in `tests/lab/bench.rs`.
//!
//! An empty directory passed as `--sysfs` makes the PCI side deterministic: no device
//! resolves and no provider exists, whatever this machine has.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::util::{data, fixture, output, p2pdma_command, Scratch};

impl Scratch {
    fn bench(&self, args: &[&str]) -> Output {
        self.bench_in(&self.sysfs(), args, None)
    }

    fn bench_in(&self, sysfs: &Path, args: &[&str], path_env: Option<&Path>) -> Output {
        let mut cmd = p2pdma_command();
        cmd.arg("--sysfs").arg(sysfs).arg("bench").args(args);
        if let Some(p) = path_env {
            cmd.env("PATH", p).env_remove("P2PDMA_FIO");
        }
        output(&mut cmd, "")
    }
}

/// Exits non-zero with exactly one line on stderr containing every piece of `expected`,
/// and prints nothing on stdout.
fn assert_one_line_error(out: &Output, expected: &[&str]) {
    assert!(!out.status.success(), "must fail");
    assert!(
        matches!(out.status.code(), Some(1 | 3)),
        "bad input exits 1, an impossible P2P 3: {:?}",
        out.status.code()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    for e in expected {
        assert!(lines[0].contains(e), "{e:?} not in {stderr}");
    }
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn bad_parameters_are_one_line_errors() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 1));
    let src = src.to_str().unwrap();
    let base = ["--workload", "read", "--src", src, "--mode", "host"];
    let run = |extra: &[&str]| c.bench(&[&base[..], extra].concat());

    assert_one_line_error(&run(&["--size", "1M", "--bs", "0"]), &["--bs", "0"]);
    assert_one_line_error(
        &run(&["--size", "1M", "--bs", "1000"]),
        &["--bs 1000", "512"],
    );
    assert_one_line_error(&run(&["--size", "1M", "--iodepth", "0"]), &["--iodepth"]);
    assert_one_line_error(&run(&["--size", "1M", "--jobs", "0"]), &["--jobs 0"]);
    assert_one_line_error(&run(&["--size", "1M", "--repeat", "0"]), &["--repeat 0"]);
    assert_one_line_error(&run(&[]), &["--size", "--runtime"]);
    assert_one_line_error(&run(&["--runtime", "5h"]), &["--runtime"]);
    assert_one_line_error(&run(&["--size", "2M"]), &["fewer than --size"]);
    assert_one_line_error(
        &run(&["--size", "1M", "--bs", "1M", "--jobs", "2"]),
        &["less than one block"],
    );
    assert_one_line_error(
        &run(&["--size", "1M", "--plot", "out.png"]),
        &["--plot", ".svg"],
    );
}

#[test]
fn writes_need_an_explicit_destination_and_the_checks_of_copy() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 2));
    let src = src.to_str().unwrap();
    let out = c.bench(&[
        "--workload",
        "write",
        "--src",
        src,
        "--size",
        "1M",
        "--mode",
        "host",
    ]);
    assert_one_line_error(&out, &["--dst"]);
    assert_eq!(std::fs::read(src).unwrap(), data(1 << 20, 2), "untouched");

    // A destination file smaller than the range is refused unless --force, as by copy.
    let small = c.file("small", &data(64 << 10, 3));
    let out = c.bench(&[
        "--workload",
        "write",
        "--dst",
        small.to_str().unwrap(),
        "--size",
        "1M",
        "--mode",
        "host",
    ]);
    assert_one_line_error(&out, &["refusing to write", "--force"]);
    assert_eq!(
        std::fs::read(&small).unwrap(),
        data(64 << 10, 3),
        "untouched"
    );

    let out = c.bench(&[
        "--workload",
        "copy",
        "--src",
        src,
        "--dst",
        src,
        "--size",
        "1M",
        "--mode",
        "host",
    ]);
    assert_one_line_error(&out, &["overlaps"]);
}

#[test]
fn both_modes_without_p2p_say_why_and_fail() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 4));
    let out = c.bench(&[
        "--workload",
        "read",
        "--src",
        src.to_str().unwrap(),
        "--size",
        "1M",
    ]);
    assert_one_line_error(&out, &["p2p mode is impossible", "--mode host"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the exit-code table's P2P refusal"
    );
}

#[test]
fn a_provider_without_p2pmem_is_refused() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 5));
    let fixture = fixture("switch");
    let out = c.bench_in(
        &fixture,
        &[
            "--workload",
            "read",
            "--src",
            src.to_str().unwrap(),
            "--size",
            "1M",
            "--provider",
            "0000:02:00.0",
        ],
        None,
    );
    assert_one_line_error(
        &out,
        &["--provider 0000:02:00.0 offers no p2pmem", "0000:03:00.0"],
    );
}

#[test]
fn fio_missing_names_fio_and_how_to_install_it() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 6));
    let empty_path = c.path("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let out = c.bench_in(
        &c.sysfs(),
        &[
            "--workload",
            "read",
            "--src",
            src.to_str().unwrap(),
            "--size",
            "1M",
            "--mode",
            "host",
            "--fio",
        ],
        Some(&empty_path),
    );
    assert_one_line_error(&out, &["fio", "apt-get install fio"]);
}

/// The copy workload runs the copy engine for real: the destination holds the source's
/// bytes afterwards, and the reported bytes are the range times the runs.
#[test]
fn a_host_copy_moves_what_it_reports() {
    let c = Scratch::new();
    let src_bytes = data(2 << 20, 7);
    let src = c.file("src", &src_bytes);
    let dst = c.file("dst", &data(2 << 20, 8));
    let plot = c.path("plot.svg");
    let out = c.bench(&[
        "--workload",
        "copy",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        dst.to_str().unwrap(),
        "--size",
        "1M",
        "--bs",
        "64k,256k",
        "--iodepth",
        "2",
        "--jobs",
        "2",
        "--repeat",
        "2",
        "--warmup",
        "1",
        "--mode",
        "host",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let after = std::fs::read(&dst).unwrap();
    // Each case ends with a copy run (after the sides alone), so the range holds the
    // source's bytes again.
    assert!(
        after[..1 << 20] == src_bytes[..1 << 20],
        "copied range differs"
    );
    assert!(
        after[1 << 20..] == data(2 << 20, 8)[1 << 20..],
        "bytes past the range changed"
    );

    let results = v["results"].as_array().unwrap();
    // 2 block sizes x (copy, read alone, write alone), p2pdma only.
    assert_eq!(results.len(), 6);
    for r in results {
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{r}");
        for run in runs {
            assert_eq!(run["io_bytes"], 1 << 20, "{run}");
            assert!(run["bw"].as_f64().unwrap() > 0.0);
        }
        let has_clat = runs[0]["clat_ns"]["percentile"]["99.000000"].is_number();
        assert_eq!(has_clat, r["measures"] != "workload", "{r}");
    }
    // Warm-up and measured runs: per block size 3 copies; each side alone 3 times more.
    let totals = &v["p2pdma_totals"];
    assert_eq!(totals["read_bytes"], 2 * 6 * (1 << 20));
    assert_eq!(totals["written_bytes"], 2 * 6 * (1 << 20));
    let ratio = &v["ratios"]["copy bs=64k iodepth=2 host"];
    assert!(ratio["copy_over_min_read_write"].as_f64().unwrap() > 0.0);
    assert!(ratio["bw"].is_null(), "no fio, no p2pdma/fio ratio");

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("p2pdma copy host depth 2"),
        "legend names the series"
    );
    assert!(svg.contains("p99 completion latency"));
}

/// With fio installed, `--fio` puts fio's figures beside ours and the table ends with the
/// ratio lines.
#[test]
fn fio_runs_beside_and_the_table_ends_with_ratios() {
    if std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: fio is not installed on this host (apt-get install fio)");
        return;
    }
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 9));
    let out = c.bench(&[
        "--workload",
        "read",
        "--src",
        src.to_str().unwrap(),
        "--size",
        "1M",
        "--bs",
        "128k",
        "--repeat",
        "2",
        "--warmup",
        "0",
        "--mode",
        "host",
        "--fio",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let last = table.lines().last().unwrap();
    assert!(
        last.starts_with("  read bs=128k iodepth=4 host: p2pdma/fio throughput "),
        "{table}"
    );
    assert!(last.contains("p99 latency"), "{table}");
    assert_eq!(table.matches(" fio    host read ").count(), 1, "{table}");
}

/// The output contract: with `--json`, a failure is one JSON error object on stdout with
/// the exit-code table's kind and status.
#[test]
fn json_failures_follow_the_output_contract() {
    let c = Scratch::new();
    let src = c.file("src", &data(1 << 20, 10));
    let src = src.to_str().unwrap();
    let out = c.bench(&["--workload", "read", "--src", src, "--bs", "0", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "invalid_input", "{v}");
    assert_eq!(v["error"]["exit_code"], 1, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("--bs"),
        "{v}"
    );

    let out = c.bench(&["--workload", "read", "--src", src, "--size", "1M", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "p2p_refused", "{v}");
}
