//! The contract with scripts (README "Exit status and JSON"): every `--json` command
//! prints exactly one JSON document on stdout, an `{"error": {...}}` object on failure;
//! exit statuses follow the table; a closed stdout ends every command quietly with
//! success. No VM: fixtures and files in a temp dir.

use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::Value;

use crate::util::{fixture, p2pdma, p2pdma_command, Scratch};

/// The one JSON document on stdout, with an `error` object holding kind, message and
/// exit code equal to the process's status; the same message on stderr, one line.
fn error_object(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {text:?}"));
    let error = doc["error"].clone();
    assert!(error.is_object(), "no error object: {doc}");
    assert!(error["kind"].is_string(), "{doc}");
    let message = error["message"].as_str().expect("message");
    assert!(!message.is_empty());
    assert_eq!(
        error["exit_code"].as_i64(),
        out.status.code().map(i64::from),
        "{doc}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(stderr.contains(message), "{stderr} vs {message}");
    error
}

impl Scratch {
    /// A file of `len` bytes, a pattern that `seed` changes in every byte; its path.
    fn patterned(&self, name: &str, len: usize, seed: u8) -> String {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect();
        self.file(name, &bytes).display().to_string()
    }
}

#[test]
fn every_json_command_prints_an_error_object_on_failure() {
    let empty = tempfile::tempdir().unwrap();
    let switch = fixture("switch");
    // (sysfs, args, expected kind, a word of the message)
    let cases: &[(&Path, &[&str], &str, &str)] = &[
        (
            empty.path(),
            &["topo", "--json"],
            "failure",
            "bus/pci/devices",
        ),
        (
            empty.path(),
            &["topo", "--matrix", "--json"],
            "failure",
            "bus/pci/devices",
        ),
        (
            empty.path(),
            &["topo", "--pairs", "--json"],
            "failure",
            "bus/pci/devices",
        ),
        (
            &switch,
            &[
                "topo",
                "--explain",
                "0000:03:00.0",
                "/dev/nvme9n1",
                "--json",
            ],
            "failure",
            "/dev/nvme9n1",
        ),
        (
            &switch,
            &["topo", "--choose", "0000:07:00.0", "--json"],
            "failure",
            "0000:07:00.0",
        ),
        (
            &switch,
            &["probe", "--provider", "0000:07:00.0", "/dev/null", "--json"],
            "invalid_input",
            "0000:07:00.0",
        ),
        (
            &switch,
            &["mem", "info", "0000:07:00.0", "--json"],
            "invalid_input",
            "0000:07:00.0",
        ),
        (
            &switch,
            &["mem", "test", "0000:07:00.0", "--json"],
            "invalid_input",
            "0000:07:00.0",
        ),
        (
            &switch,
            &[
                "lab",
                "topologies",
                "--topologies",
                "/nonexistent.toml",
                "--json",
            ],
            "failure",
            "/nonexistent.toml",
        ),
        (
            &switch,
            &["lab", "bench", "--runs", "0", "--json"],
            "failure",
            "--runs",
        ),
        (
            &switch,
            &["copy", "a", "b", "--length", "12x", "--json"],
            "usage",
            "12x",
        ),
    ];
    for (sysfs, args, kind, word) in cases {
        let out = p2pdma(sysfs, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let error = error_object(&out);
        assert_eq!(error["kind"], *kind, "{args:?}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(word),
            "{args:?}: {error} lacks {word}"
        );
    }
}

#[test]
fn copy_refusals_before_any_write_are_error_objects_and_write_nothing() {
    let f = Scratch::new();
    let src = f.patterned("src", 1 << 20, 1);
    let dst = f.patterned("dst", 1 << 20, 2);
    let before = std::fs::read(&dst).unwrap();
    let sysfs = f.sysfs();
    let cases: &[(&[&str], &str, &str, i32)] = &[
        // A range past the end of the destination: printed nothing on stdout before.
        (&["--dst-offset", "512k"], "invalid_input", "would grow", 1),
        (
            &["--src-offset", "100"],
            "invalid_input",
            "--src-offset 100",
            1,
        ),
        (
            &["--queue-depth", "0"],
            "invalid_input",
            "--queue-depth 0",
            1,
        ),
        (
            &["--src-offset", "2M"],
            "invalid_input",
            "nothing to copy",
            1,
        ),
        // No P2P path and P2P only: refused by the kernel's rules, nothing written.
        (
            &["--bounce", "never"],
            "p2p_refused",
            "cannot take part in P2P",
            3,
        ),
    ];
    for (extra, kind, word, code) in cases {
        let mut args = vec!["copy", &src, &dst, "--json"];
        if !extra.contains(&"--bounce") {
            args.extend(["--bounce", "always"]);
        }
        args.extend_from_slice(extra);
        let out = p2pdma(&sysfs, &args);
        assert_eq!(out.status.code(), Some(*code), "{extra:?}");
        let error = error_object(&out);
        assert_eq!(error["kind"], *kind, "{extra:?}: {error}");
        assert!(error["message"].as_str().unwrap().contains(word), "{error}");
        assert_eq!(std::fs::read(&dst).unwrap(), before, "{extra:?} wrote");
    }
    let missing = f.path("missing").display().to_string();
    let out = p2pdma(
        &sysfs,
        &["copy", &missing, &dst, "--json", "--bounce", "always"],
    );
    assert_eq!(error_object(&out)["kind"], "invalid_input");
}

#[test]
fn usage_errors_exit_2_and_refusals_exit_3() {
    let switch = fixture("switch");
    let out = p2pdma(&switch, &["topo", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "no --json: nothing on stdout");

    let out = p2pdma(
        &fixture("acs"),
        &[
            "topo",
            "--explain",
            "0000:01:00.0",
            "/dev/nvme1n1",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one document");
    assert_eq!(v["p2p"], false, "{v}");

    let help = p2pdma(&switch, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for line in [
        "2    usage",
        "3    P2P refused",
        "4    partial copy",
        "5    verification mismatch",
        "125  lab failure",
    ] {
        assert!(text.contains(line), "--help lacks {line:?}: {text}");
    }
}

#[test]
fn pairs_json_is_one_document() {
    let out = p2pdma(&fixture("mixed"), &["topo", "--pairs", "--json"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let pairs = v.as_array().expect("an array of pairs");
    let text = p2pdma(&fixture("mixed"), &["topo", "--pairs"]);
    assert_eq!(
        pairs.len(),
        String::from_utf8_lossy(&text.stdout).lines().count(),
        "the same pairs in text and JSON"
    );
    assert!(pairs.iter().all(|p| p["client_disk"].is_string()));
}

/// Runs p2pdma with a stdout whose reading end is already closed: every write fails
/// with EPIPE at once, deterministically.
fn closed_stdout(sysfs: &Path, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = p2pdma_command()
        .arg("--sysfs")
        .arg(sysfs)
        .args(args)
        .env("P2PDMA_LAB_KERNEL", "/nonexistent/bzImage")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    out
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_success() {
    let f = Scratch::new();
    let src = f.patterned("src", 1 << 20, 3);
    let dst = f.patterned("dst", 1 << 20, 4);
    let mixed = fixture("mixed");
    let sysfs = f.sysfs();
    let cases: Vec<(&Path, Vec<&str>)> = vec![
        (&mixed, vec!["topo"]),
        (&mixed, vec!["topo", "--json"]),
        (&mixed, vec!["topo", "--matrix"]),
        (&mixed, vec!["topo", "--matrix", "--json"]),
        (&mixed, vec!["topo", "--pairs"]),
        (&mixed, vec!["topo", "--pairs", "--json"]),
        (&mixed, vec!["topo", "--dot"]),
        (&mixed, vec!["topo", "--svg"]),
        (&mixed, vec!["topo", "--choose", "0000:04:00.0"]),
        (
            &mixed,
            vec!["topo", "--explain", "0000:04:00.0", "0000:04:00.0"],
        ),
        (&mixed, vec!["mem", "info"]),
        (&mixed, vec!["mem", "info", "--json"]),
        (&mixed, vec!["lab", "topologies"]),
        (&mixed, vec!["lab", "topologies", "--json"]),
        (&mixed, vec!["mem", "info", "--prometheus"]),
        (&mixed, vec!["completions", "bash"]),
        (&mixed, vec!["man"]),
        (&mixed, vec!["--help"]),
        (&mixed, vec!["--version"]),
        (&sysfs, vec!["copy", &src, &dst, "--bounce", "always"]),
        (
            &sysfs,
            vec!["copy", &src, &dst, "--bounce", "always", "--json"],
        ),
        (
            &sysfs,
            vec!["copy", &src, &dst, "--bounce", "always", "--dry-run"],
        ),
    ];
    // A status other than success survives a closed stdout: refused stays 3.
    let out = closed_stdout(
        &fixture("acs"),
        &["topo", "--explain", "0000:01:00.0", "/dev/nvme1n1"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (root, args) in &cases {
        let out = closed_stdout(root, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} is not quiet: {stderr}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let root = fixture("switch");
    for (shell, marker) in [
        ("bash", "_p2pdma()"),
        ("zsh", "#compdef p2pdma"),
        ("fish", "complete -c p2pdma"),
    ] {
        let out = p2pdma(&root, &["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {marker} missing");
        assert!(
            text.contains("prometheus"),
            "{shell}: mem info --prometheus missing"
        );
    }
    let out = p2pdma(&root, &["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH p2pdma 1"),
        "{page}"
    );
    assert!(
        page.contains("Exit status"),
        "the exit-code table is in the man page"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = p2pdma(&root, &["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    for page in [
        "p2pdma.1",
        "p2pdma-copy.1",
        "p2pdma-mem-info.1",
        "p2pdma-topo.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page} not written");
    }
}

#[test]
fn sizes_take_suffixes_everywhere_and_quiet_silences_notes() {
    let root = fixture("switch");
    // The size parses (the error is the missing provider, not the size) ...
    let out = p2pdma(&root, &["mem", "test", "0000:07:00.0", "--size", "1G"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PCI device 0000:07:00.0"));
    // ... and a bad one is a usage error that names the suffixes.
    let out = p2pdma(&root, &["mem", "test", "0000:03:00.0", "--size", "1Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("k, M, G or T suffix"));

    let f = Scratch::new();
    let src = f.patterned("src", 1 << 20, 5);
    let dst = f.patterned("dst", 1 << 20, 6);
    let sysfs = f.sysfs();
    let loud = p2pdma(&sysfs, &["copy", &src, &dst, "--bounce", "auto"]);
    assert!(loud.status.success());
    assert!(String::from_utf8_lossy(&loud.stderr).contains("copying through host memory"));
    let quiet = p2pdma(&sysfs, &["--quiet", "copy", &src, &dst, "--bounce", "auto"]);
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert!(!quiet.stdout.is_empty(), "--quiet keeps the result");

    let snap = f.path("snap");
    let out = p2pdma(&root, &["snapshot", snap.to_str().unwrap(), "-q"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mem_info_prometheus_is_the_node_exporter_text_format() {
    let out = p2pdma(&fixture("switch"), &["mem", "info", "--prometheus"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# TYPE p2pdma_pool_available_bytes gauge"),
        "{text}"
    );
    assert!(
        text.contains("p2pdma_pool_size_bytes{bdf=\"0000:03:00.0\",driver=\"nvme\"} 16777216"),
        "{text}"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("series value");
        assert!(series.starts_with("p2pdma_pool_"), "{line}");
        value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    }
}
