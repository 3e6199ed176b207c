//! Bad input in the lab, table-driven: each invocation runs twice in ONE guest (one boot
//! for the whole table), as text and with `--json`, and must give
//! - the expected exit status (the README's table) both times,
//! - one line of error text holding the expected words,
//! - with `--json`, one JSON document whose `error` object carries the same status,
//! - and, for invocations that name a destination, an unchanged destination (md5 of the
//!   whole device, which starts full of random bytes, before and after both runs).
//!
//! The same guest also runs commands that succeed (probe, mem test, a P2P copy ...) with a
//! closed stdout: each must end quietly with status 0.

use crate::harness::{p2p_refusal_errno, Flavour, Lab};

/// Stands for the booted kernel's P2P refusal text in a case's words ("Remote I/O error"
/// before Linux 6.17, "Invalid argument" from it).
const P2P_ERRNO_TEXT: &str = "<the kernel's P2P refusal errno>";

/// One invocation: its name, the arguments (expanded by the guest's shell: $A and $B are
/// the `mixed` topology's sw0 and sw1 namespaces, $R root0's, $PA and $PB the
/// controllers of sw0 and sw1, $N the controller without a CMB), the exit status, words
/// the error line must hold, and the shell variable naming the destination to
/// checksum ("-": none).
struct Case {
    name: &'static str,
    args: &'static str,
    status: i32,
    words: &'static [&'static str],
    dst: &'static str,
}

const fn case(
    name: &'static str,
    args: &'static str,
    status: i32,
    words: &'static [&'static str],
    dst: &'static str,
) -> Case {
    Case {
        name,
        args,
        status,
        words,
        dst,
    }
}

const CASES: &[Case] = &[
    // copy: alignment, bounds, sizes.
    case(
        "src-offset-unaligned",
        "copy $A $B --src-offset 100 --length 1M",
        1,
        &["--src-offset 100", "multiple of 512"],
        "B",
    ),
    case(
        "dst-offset-unaligned",
        "copy $A $B --dst-offset 1000 --length 1M",
        1,
        &["--dst-offset 1000", "multiple of 512"],
        "B",
    ),
    case(
        "length-unaligned",
        "copy $A $B --length 1000",
        1,
        &["--length 1000", "multiple of 512"],
        "B",
    ),
    case(
        "chunk-unaligned",
        "copy $A $B --length 1M --chunk-size 1000",
        1,
        &["--chunk-size 1000"],
        "B",
    ),
    case(
        "chunk-zero",
        "copy $A $B --length 1M --chunk-size 0",
        1,
        &["--chunk-size 0 is not usable"],
        "B",
    ),
    case(
        "depth-zero",
        "copy $A $B --length 1M --queue-depth 0",
        1,
        &["--queue-depth 0 is not usable"],
        "B",
    ),
    case(
        "depth-huge",
        "copy $A $B --length 1M --queue-depth 100000",
        1,
        &["--queue-depth 100000 is not usable"],
        "B",
    ),
    case(
        "dst-past-end",
        "copy $A $B --dst-offset 60M --length 8M",
        1,
        &["only 67108864 bytes", "smaller --length"],
        "B",
    ),
    case(
        "dst-past-end-force",
        "copy $A $B --dst-offset 60M --length 8M --force",
        1,
        &["--force does not apply to block devices"],
        "B",
    ),
    case(
        "src-past-end",
        "copy $A $B --src-offset 60M --length 8M",
        1,
        &["past the end of"],
        "B",
    ),
    case(
        "nothing-to-copy",
        "copy $A $B --src-offset 64M",
        1,
        &["nothing to copy"],
        "B",
    ),
    case(
        "length-zero",
        "copy $A $B --length 0",
        1,
        &["nothing to copy"],
        "B",
    ),
    case(
        "overlap",
        "copy $B $B --dst-offset 1M --length 4M",
        1,
        &["overlaps the source range"],
        "B",
    ),
    case(
        "missing-source",
        "copy /dev/nvme9n1 $B --length 1M",
        1,
        &["/dev/nvme9n1 does not exist"],
        "B",
    ),
    case(
        "source-directory",
        "copy /root $B --length 1M",
        1,
        &["/root is a directory"],
        "B",
    ),
    case(
        "source-char-device",
        "copy /dev/null $B --length 1M",
        1,
        &["/dev/null is a character device"],
        "B",
    ),
    case(
        "destination-directory",
        "copy $A /root --length 1M",
        1,
        &["/root is a directory"],
        "A",
    ),
    case(
        "new-file-on-ramfs",
        "copy $A /root/new.bin --length 1M --force",
        1,
        // The guest's / is the initramfs: no O_DIRECT alignment to learn, refused
        // before anything is created (fail closed, not a guessed 512).
        &[
            "cannot learn the O_DIRECT alignment of /root",
            "STATX_DIOALIGN",
        ],
        "-",
    ),
    case(
        "provider-absent",
        "copy $A $B --length 1M --provider 0000:7f:00.0",
        1,
        &["--provider 0000:7f:00.0 offers no p2pmem"],
        "B",
    ),
    case(
        "provider-without-cmb",
        "copy $A $B --length 1M --provider $N",
        1,
        &["offers no p2pmem"],
        "B",
    ),
    case(
        "p2p-refused-by-kernel",
        "copy $R $A --length 1M",
        3,
        &["refused P2P", "--bounce auto"],
        "A",
    ),
    // copy: what clap refuses.
    case(
        "size-suffix",
        "copy $A $B --length 12x",
        2,
        &["'12x' is not a size", "suffix"],
        "B",
    ),
    case(
        "size-overflow",
        "copy $A $B --length 99999999T",
        2,
        &["does not fit in 64 bits"],
        "B",
    ),
    case(
        "unknown-option",
        "copy $A $B --frobnicate",
        2,
        &["--frobnicate"],
        "B",
    ),
    case(
        "missing-destination",
        "copy $A",
        2,
        &["<DST>", "usage: p2pdma copy"],
        "A",
    ),
    case(
        "bad-bounce",
        "copy $A $B --bounce sometimes",
        2,
        &["sometimes", "--bounce"],
        "B",
    ),
    case(
        "bad-provider-address",
        "copy $A $B --provider zz",
        2,
        &["zz", "--provider"],
        "B",
    ),
    case(
        "only-with-verify",
        "copy $A $B --only write --verify",
        2,
        &["--verify", "--only"],
        "B",
    ),
    // topo.
    case(
        "explain-absent-function",
        "topo --explain 0000:7f:00.0 $B",
        1,
        &["no PCI function 0000:7f:00.0"],
        "-",
    ),
    case(
        "explain-absent-disk",
        "topo --explain $PA /dev/nvme9n1",
        1,
        &["/dev/nvme9n1"],
        "-",
    ),
    case(
        "explain-one-name",
        "topo --explain $PA",
        2,
        &["--explain"],
        "-",
    ),
    case(
        "matrix-absent-disk",
        "topo --matrix /dev/nvme9n1",
        1,
        &["/dev/nvme9n1"],
        "-",
    ),
    case(
        "choose-nonsense",
        "topo --choose nonsense",
        1,
        &["'nonsense'"],
        "-",
    ),
    case("topo-unknown-option", "topo --bogus", 2, &["--bogus"], "-"),
    case(
        "topo-dot-and-svg",
        "topo --dot --svg",
        2,
        &["--dot", "--svg"],
        "-",
    ),
    // probe.
    case(
        "probe-refused",
        "probe --provider $PA $R",
        3,
        &["p2p-refused", P2P_ERRNO_TEXT],
        "-",
    ),
    case(
        "probe-no-cmb",
        "probe --provider $N $B",
        1,
        &["has no p2pmem"],
        "-",
    ),
    case(
        "probe-absent-provider",
        "probe --provider 0000:7f:00.0 $B",
        1,
        &["no PCI device 0000:7f:00.0"],
        "-",
    ),
    case(
        "probe-absent-client",
        "probe --provider $PA /dev/nvme9n1",
        1,
        &["/dev/nvme9n1"],
        "-",
    ),
    case(
        "probe-bad-address",
        "probe --provider xyz $B",
        2,
        &["xyz", "--provider"],
        "-",
    ),
    // mem.
    case(
        "info-absent",
        "mem info 0000:7f:00.0",
        1,
        &["no PCI device 0000:7f:00.0"],
        "-",
    ),
    case("info-no-cmb", "mem info $N", 1, &["has no p2pmem"], "-"),
    case(
        "info-bad-address",
        "mem info zz",
        2,
        &["'zz'", "[BDF]"],
        "-",
    ),
    case(
        "test-zero-buffers",
        "mem test $PA --buffers 0",
        1,
        &["--buffers must be at least 1"],
        "-",
    ),
    case(
        "test-zero-size",
        "mem test $PA --size 0",
        1,
        &["cannot allocate 0 bytes"],
        "-",
    ),
    case(
        "test-too-big",
        "mem test $PA --size 1G",
        1,
        &["cannot supply", "contiguous bytes"],
        "-",
    ),
    case(
        "test-bad-size",
        "mem test $PA --size 4Q",
        2,
        &["'4Q' is not a size"],
        "-",
    ),
];

const PRELUDE: &str = r#"
sum() { if [ "$1" = - ]; then echo none; else eval "md5sum < \$$1" | cut -d' ' -f1; fi; }
A=$(ns sw0); B=$(ns sw1); R=$(ns root0); PA=$(bdf sw0); PB=$(bdf sw1); N=$(bdf nocmb0)
for d in $A $B $R; do dd if=/dev/urandom of=$d bs=1M count=64 oflag=direct 2>/dev/null; done
# run NAME DST ARGS...: the invocation as text, then with --json.
run() {
  name=$1; dst=$2; shift 2
  before=$(sum $dst)
  p2pdma "$@" > /tmp/out.txt 2> /tmp/err.txt; rc=$?
  p2pdma "$@" --json > /tmp/out.json 2> /tmp/jerr.txt; jrc=$?
  after=$(sum $dst)
  case "$*" in *" /root/new.bin "*) [ -e /root/new.bin ] && after=created;; esac
  echo "CASE $name $rc $jrc $before $after $(wc -l < /tmp/err.txt) $(wc -l < /tmp/out.txt) $(wc -l < /tmp/out.json)"
  echo "ERR $name $(one_line /tmp/err.txt)"
  echo "OUT $name $(one_line /tmp/out.txt)"
  echo "JSON $name $(one_line /tmp/out.json)"
}
"#;

/// Commands that succeed, run with a stdout whose reader is gone (`| true` exits at
/// once; the command starts writing a second later): each must end quietly with status 0.
const CLOSED_STDOUT: &[(&str, &str)] = &[
    ("probe", "probe --provider $PB $A"),
    ("probe-json", "probe --provider $PB $A --json"),
    ("mem-test", "mem test $PA --buffers 2"),
    ("mem-test-json", "mem test $PA --buffers 2 --json"),
    ("mem-info", "mem info"),
    ("pairs", "topo --pairs"),
    ("pairs-json", "topo --pairs --json"),
    ("copy", "copy $A $B --length 1M --dst-offset 32M --verify"),
    ("guest-nvme", "lab guest nvme sw0"),
];

fn script() -> String {
    let mut s = PRELUDE.to_owned();
    for c in CASES {
        s.push_str(&format!("run {} {} {}\n", c.name, c.dst, c.args));
    }
    s.push_str(
        "pipe() { name=$1; shift; (sleep 1; p2pdma \"$@\" 2> /tmp/pipe.err; echo $? > /tmp/pipe.rc) | true; \
         echo \"PIPE $name $(cat /tmp/pipe.rc) $(wc -c < /tmp/pipe.err) $(one_line /tmp/pipe.err)\"; }\n",
    );
    for (name, args) in CLOSED_STDOUT {
        s.push_str(&format!("pipe {name} {args}\n"));
    }
    s.push_str("echo DONE\n");
    s
}

/// The rest of the line after `KEY NAME `.
fn rest<'a>(stdout: &'a str, key: &str, name: &str) -> &'a str {
    let prefix = format!("{key} {name}");
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .filter(|r| r.is_empty() || r.starts_with(' '))
        })
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} line for {name}"))
}

#[test]
fn at_least_forty_invocations() {
    assert!(CASES.len() * 2 >= 40, "{} invocations", CASES.len() * 2);
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len(), "case names are unique");
}

#[test]
#[ignore = "lab: boots one QEMU guest for the whole table; run with --include-ignored"]
fn bad_input_gets_its_status_one_line_a_json_error_and_writes_nothing() {
    let run = Lab::new("mixed", Flavour::Standard)
        .args(&["--timeout", "900"])
        .run(&script());
    assert!(run.stdout.contains("DONE"), "the script did not finish");
    let cases = run.keyed("CASE");
    let mut failures = Vec::new();
    for c in CASES {
        let Some(f) = cases.get(c.name) else {
            failures.push(format!("{}: did not run", c.name));
            continue;
        };
        let (rc, jrc, before, after) = (f[0], f[1], f[2], f[3]);
        let (err_lines, out_lines, json_lines) = (f[4], f[5], f[6]);
        let err = rest(&run.stdout, "ERR", c.name);
        let out = rest(&run.stdout, "OUT", c.name);
        let json = rest(&run.stdout, "JSON", c.name);
        let mut fail = |what: String| failures.push(format!("{}: {what}", c.name));
        if rc != c.status.to_string() {
            fail(format!("exit {rc}, expected {} ({err}{out})", c.status));
        }
        if jrc != c.status.to_string() {
            fail(format!("exit {jrc} with --json, expected {}", c.status));
        }
        if before != after {
            fail(format!("the destination ${} changed", c.dst));
        }
        // The one line: on stderr, or (probe reports its refusal) on stdout.
        let (line, lines) = if err.is_empty() {
            (out, out_lines)
        } else {
            (err, err_lines)
        };
        if lines != "1" {
            fail(format!("{lines} lines of error text: {line}"));
        }
        for &w in c.words {
            // The refusal's errno text depends on the kernel release booted.
            let w = if w == P2P_ERRNO_TEXT {
                p2p_refusal_errno().1
            } else {
                w
            };
            if !line.contains(w) {
                fail(format!("{line:?} lacks {w:?}"));
            }
        }
        if json_lines != "1" {
            fail(format!("{json_lines} lines on stdout with --json: {json}"));
        }
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(v) if v["error"].is_object() => {
                if v["error"]["exit_code"].as_i64() != Some(i64::from(c.status)) {
                    fail(format!("error.exit_code is not {}: {v}", c.status));
                }
                if v["error"]["message"].as_str().is_none_or(str::is_empty) {
                    fail(format!("no error.message: {v}"));
                }
            }
            Ok(v) => fail(format!("no error object: {v}")),
            Err(e) => fail(format!("stdout is not one JSON document ({e}): {json}")),
        }
    }
    // The same guest: a closed stdout ends each command quietly with success.
    let pipes = run.lines("PIPE");
    assert_eq!(pipes.len(), CLOSED_STDOUT.len(), "closed-stdout runs");
    for p in &pipes {
        if p[1] != "0" || p[2] != "0" {
            failures.push(format!(
                "closed stdout, {}: exit {}, stderr {}",
                p[0],
                p[1],
                p[3..].join(" ")
            ));
        }
    }
    eprintln!(
        "FIGURE bad-input invocations={} cases={} failures={}",
        CASES.len() * 2,
        CASES.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    run.assert_kernel_log_clean();
}
