//! `p2pdma copy` on the host, without a VM: regular files on the host's filesystem, real
//! io_uring and O_DIRECT, host bounce buffers (P2P itself is tested in `tests/lab/copy.rs`).
//!
//! An empty directory passed as `--sysfs` makes the PCI side deterministic: no device
//! resolves, so nothing can do P2P whatever disk the temp dir is on.

use std::path::Path;
use std::process::Output;

use crate::util::{data, output, p2pdma_command, stderr, Scratch};

impl Scratch {
    fn copy(&self, src: &Path, dst: &Path, args: &[&str]) -> Output {
        output(
            p2pdma_command()
                .arg("--sysfs")
                .arg(self.sysfs())
                .arg("copy")
                .arg(src)
                .arg(dst)
                .args(args),
            "",
        )
    }
}

#[test]
fn bounce_copy_of_a_range_between_files_is_exact_and_verified() {
    let case = Scratch::new();
    let src_bytes = data(4 << 20, 1);
    let dst_bytes = data(4 << 20, 2);
    let src = case.file("src", &src_bytes);
    let dst = case.file("dst", &dst_bytes);
    let out = case.copy(
        &src,
        &dst,
        &[
            "--src-offset",
            "64k",
            "--dst-offset",
            "1M",
            "--length",
            "2M",
            "--chunk-size",
            "256k",
            "--queue-depth",
            "3",
            "--bounce",
            "always",
            "--verify",
            "--json",
        ],
    );
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["bytes"], 2 << 20);
    assert_eq!(j["mode"], "bounce");
    assert_eq!(j["verified"], true);
    assert_eq!(j["bounce_reason"], "--bounce always");
    assert_eq!(j["chunk_size"], 256 << 10);
    assert_eq!(j["queue_depth"], 3);
    assert!(j["seconds"].as_f64().unwrap() > 0.0);

    let after = std::fs::read(&dst).unwrap();
    let mut expected = dst_bytes.clone();
    expected[1 << 20..3 << 20].copy_from_slice(&src_bytes[64 << 10..(64 << 10) + (2 << 20)]);
    assert!(
        after == expected,
        "destination differs from the expected bytes"
    );
}

#[test]
fn without_a_p2p_path_never_refuses_and_auto_bounces_saying_why() {
    let case = Scratch::new();
    let src = case.file("src", &data(1 << 20, 3));
    let dst = case.file("dst", &vec![0u8; 1 << 20]);

    let never = case.copy(&src, &dst, &[]);
    assert!(!never.status.success());
    let msg = stderr(&never);
    assert!(msg.contains("cannot take part in P2P DMA"), "{msg}");
    assert!(msg.contains("--bounce auto"), "{msg}");
    assert_eq!(std::fs::read(&dst).unwrap(), vec![0u8; 1 << 20]);

    let auto = case.copy(&src, &dst, &["--bounce", "auto", "--json"]);
    assert!(auto.status.success());
    let j: serde_json::Value = serde_json::from_slice(&auto.stdout).unwrap();
    assert_eq!(j["mode"], "bounce");
    assert!(
        j["bounce_reason"]
            .as_str()
            .unwrap()
            .contains("cannot take part in P2P"),
        "{j}"
    );
    assert_eq!(std::fs::read(&dst).unwrap(), data(1 << 20, 3));
}

#[test]
fn refusals_are_one_line_name_the_file_and_write_nothing() {
    let case = Scratch::new();
    let src = case.file("src", &data(1 << 20, 4));
    let original = data(1 << 20, 5);
    let dst = case.file("dst", &original);
    let cases: &[(&[&str], &str)] = &[
        (
            &["--src-offset", "100"],
            "--src-offset 100 is not a multiple of",
        ),
        (&["--length", "1000"], "--length 1000 is not a multiple of"),
        (&["--dst-offset", "512k"], "would grow; pass --force"),
        (&["--chunk-size", "0"], "--chunk-size 0 is not usable"),
        (&["--queue-depth", "0"], "--queue-depth 0 is not usable"),
        (&["--src-offset", "1M"], "nothing to copy"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--bounce", "always"];
        all.extend_from_slice(args);
        let out = case.copy(&src, &dst, &all);
        let msg = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(msg.contains(expected), "{args:?}: {msg}");
        assert_eq!(msg.lines().count(), 1, "{args:?}: not one line: {msg}");
        assert_eq!(std::fs::read(&dst).unwrap(), original, "{args:?} wrote");
    }

    let out = case.copy(
        &dst,
        &dst,
        &[
            "--bounce",
            "always",
            "--dst-offset",
            "256k",
            "--length",
            "512k",
        ],
    );
    assert!(stderr(&out).contains("overlaps the source range"));
    assert!(stderr(&out).contains(&dst.display().to_string()));
    assert_eq!(std::fs::read(&dst).unwrap(), original);

    let missing = case.path("missing");
    let out = case.copy(&missing, &dst, &["--bounce", "always"]);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn a_new_file_needs_force_and_a_dry_run_creates_nothing() {
    let case = Scratch::new();
    let src = case.file("src", &data(512 << 10, 6));
    let new = case.path("new");

    let out = case.copy(&src, &new, &["--bounce", "always"]);
    assert!(
        stderr(&out).contains("would be created"),
        "{}",
        stderr(&out)
    );
    assert!(!new.exists());

    let out = case.copy(&src, &new, &["--bounce", "always", "--force", "--dry-run"]);
    assert!(out.status.success());
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("mode         bounce"), "{plan}");
    assert!(plan.contains("1 chunk(s) of 1 MiB, 1 in flight"), "{plan}");
    assert!(plan.contains("nothing was read or written"), "{plan}");
    assert!(!new.exists(), "the dry run created the file");

    let out = case.copy(&src, &new, &["--bounce", "always", "--force", "--verify"]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&new).unwrap(), data(512 << 10, 6));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("through host memory"), "{text}");
    assert!(text.contains("verified: xxh3-128"), "{text}");
}
