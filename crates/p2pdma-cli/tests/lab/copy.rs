//! `p2pdma copy` in the lab: real NVMe emulation, a real P2PDMA kernel, real io_uring.
//!
//! Every check is made twice: by the tool (`--verify`, its JSON) and independently inside
//! the guest (busybox `dd | md5sum` over the same byte ranges). Refusals are proven
//! harmless by checksumming the destination before and after.
//!
//! Each test boots one guest and runs a shell script there (with the harness's helpers:
//! `ns`, `bdf`, `md5`, `fill`, `zeros`, `field`, `one_line`); the script prints one
//! `KEY field...` line per fact, and the assertions are made here on the host.

use std::collections::HashMap;

use crate::harness::{json_after, lines, p2p_refusal_errno, Flavour, Lab, LabRun};

/// A guest on `topology`, the standard kernel.
fn lab(topology: &str) -> Lab {
    Lab::new(topology, Flavour::Standard)
}

/// Copies random data between each ordered pair with offsets on both sides; prints
/// `PAIR src dst rc md5(src range) md5(dst range) md5(dst before) md5(dst after-outside)`
/// and `JSON src dst {...}`.
fn pair_script(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "SO=1048576; DO=5242880; LEN=12582912\n\
         copy_pair() {\n\
           S=$(ns $1); D=$(ns $2)\n\
           fill $S $SO $LEN\n\
           around=$(md5 $D 0 $DO)\n\
           p2pdma copy $S $D --src-offset $SO --dst-offset $DO --length $LEN --chunk-size 1M --queue-depth 4 --verify --json > /tmp/out.json 2>/tmp/err.txt\n\
           rc=$?\n\
           echo \"PAIR $1 $2 $rc $(md5 $S $SO $LEN) $(md5 $D $DO $LEN) $around $(md5 $D 0 $DO)\"\n\
           echo \"JSON $1 $2 $(one_line /tmp/out.json)\"\n\
           echo \"ERR $1 $2 $(one_line /tmp/err.txt)\"\n\
         }\n",
    );
    for (a, b) in pairs {
        s.push_str(&format!("copy_pair {a} {b}\n"));
    }
    s
}

fn check_pairs(run: &LabRun, expected: &[(&str, &str)]) {
    let pairs = run.lines("PAIR");
    let jsons: HashMap<(String, String), serde_json::Value> = run
        .lines("JSON")
        .into_iter()
        .filter(|f| f.len() > 2)
        .map(|f| {
            (
                (f[0].to_owned(), f[1].to_owned()),
                json_after(&f[2..].join(" ")),
            )
        })
        .collect();
    assert_eq!(pairs.len(), expected.len(), "one PAIR line per pair");
    for (p, (a, b)) in pairs.iter().zip(expected) {
        assert_eq!((p[0], p[1]), (*a, *b));
        assert_eq!(p[2], "0", "{a} -> {b}: p2pdma copy failed");
        assert_eq!(p[3], p[4], "{a} -> {b}: guest md5 of the ranges differ");
        assert_eq!(p[5], p[6], "{a} -> {b}: bytes before --dst-offset changed");
        let j = &jsons[&(a.to_string(), b.to_string())];
        assert_eq!(j["mode"], "p2p", "{a} -> {b}: {j}");
        assert_eq!(j["verified"], true, "{a} -> {b}: {j}");
        assert_eq!(j["bytes"], 12 << 20, "{a} -> {b}: {j}");
        assert_eq!(
            j["verification"]["src_digest"], j["verification"]["dst_digest"],
            "{a} -> {b}: {j}"
        );
        assert!(j["provider"].is_string(), "{a} -> {b}: {j}");
    }
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn p2p_copies_block_device_to_block_device_in_the_switch() {
    let pairs = [("sw0", "sw1"), ("sw1", "sw0")];
    let out = lab("switch").run(&pair_script(&pairs));
    out.assert_success();
    check_pairs(&out, &pairs);
}

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn p2p_copies_every_pair_of_the_cascade() {
    let pairs = [
        ("cas-a0", "cas-a1"),
        ("cas-a1", "cas-a0"),
        ("cas-a0", "cas-b0"),
        ("cas-b0", "cas-a0"),
        ("cas-a1", "cas-b0"),
        ("cas-b0", "cas-a1"),
    ];
    let out = lab("cascade").run(&pair_script(&pairs));
    out.assert_success();
    check_pairs(&out, &pairs);
}

/// On an AMD Zen CPU the kernel lets root-bus devices do P2P through the host bridge.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn p2p_copies_through_the_host_bridge_on_amd() {
    let pairs = [("root0", "root1"), ("root1", "root0")];
    let out = lab("rootbus-amd").run(&pair_script(&pairs));
    out.assert_success();
    check_pairs(&out, &pairs);
}

/// Behind a root port with ACS redirect (guest IOMMU on), the kernel refuses P2P and the
/// error names the kernel parameter that lifts the refusal. Booting with exactly that
/// parameter, the kernel allows the transfer (bus address) and every request completes,
/// but QEMU sends all DMA of devices behind its emulated IOMMU through the IOMMU, which
/// has no mapping for the CMB's bus address: the writes into the CMB are dropped (DMAR
/// faults in the guest log) and the destination receives stale CMB contents. Only
/// `--verify` can see that, and it must: exit non-zero, naming the first bad offset.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn the_acs_fix_lifts_the_refusal_and_verify_catches_what_the_emulated_iommu_drops() {
    let script = r#"
A=$(ns mf0); B=$(ns mf1)
fill $A 0 4194304
before=$(md5 $B 0 4194304)
p2pdma copy $A $B --length 4M --verify --json > /tmp/out.json 2>/tmp/err.txt; rc=$?
echo "RESULT $rc $(md5 $A 0 4194304) $(md5 $B 0 4194304) $before"
echo "JSON $(one_line /tmp/out.json)"
echo "ERR $(one_line /tmp/err.txt)"
echo "DMAR $(dmesg | grep -c 'DMAR: \[DMA Write')"
dd if=$A of=/tmp/a bs=4096 count=1024 2>/dev/null; dd if=$B of=/tmp/b bs=4096 count=1024 2>/dev/null
echo "CMP $(cmp /tmp/a /tmp/b 2>&1 | sed -n 's/.*char \([0-9]*\).*/\1/p')"
rm -f /tmp/a /tmp/b
"#;
    let refused = lab("acs").run(script);
    let stdout = &refused.stdout;
    let r = &lines(stdout, "RESULT")[0];
    assert_ne!(r[0], "0", "P2P behind ACS redirect must be refused");
    assert_eq!(r[2], r[3], "the refused copy changed the destination");
    let err = lines(stdout, "ERR")[0].join(" ");
    assert!(err.contains(p2p_refusal_errno().1), "{err}");
    let fix = err
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pci=disable_acs_redir="))
        .map(|list| list.trim_end_matches([';', ')', ',']).to_owned())
        .unwrap_or_else(|| panic!("no pci=disable_acs_redir= in {err}"));

    let allowed = lab("acs")
        .args(&["--kernel-arg", &format!("pci=disable_acs_redir={fix}")])
        .run(script);
    let stdout = &allowed.stdout;
    let err = lines(stdout, "ERR")[0].join(" ");
    assert!(
        !err.contains(p2p_refusal_errno().1),
        "the kernel still refuses with {fix}: {err}"
    );
    let r = &lines(stdout, "RESULT")[0];
    assert_ne!(r[0], "0", "the data was lost, the exit status must say so");
    assert_ne!(r[1], r[2], "expected QEMU's IOMMU to drop the P2P writes");
    assert!(err.contains("verification failed"), "{err}");
    // The stale CMB bytes the destination got are unrelated to the random source, so
    // they differ within the first bytes, but not always at byte 0 (a byte matches by
    // chance 1 time in 256): the first difference reported must be where the guest's
    // own `cmp` finds it (it counts from 1).
    let cmp_char: u64 = lines(stdout, "CMP")[0]
        .first()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("cmp found no difference: {stdout}"));
    let first = cmp_char - 1;
    assert!(err.contains(&format!("offset {first} differs")), "{err}");
    assert_eq!(r[0], "5", "a verification mismatch exits 5");
    // One document on stdout: the error object, carrying the copy's summary.
    let j = json_after(&lines(stdout, "JSON")[0].join(" "))["error"].clone();
    assert_eq!(j["kind"], "verify_mismatch", "{j}");
    assert_eq!(j["mode"], "p2p", "{j}");
    assert_eq!(j["verified"], false, "{j}");
    assert_eq!(j["verification"]["first_difference"], first, "{j}");
    let faults: u32 = lines(stdout, "DMAR")[0][0].parse().unwrap();
    assert!(faults > 0, "no DMAR fault in the guest log");
}

/// In `mixed`, only the switch pair can do P2P; the root-bus NVMe and the one behind its
/// own root port cannot reach anything: under `--bounce never` the copy fails with the
/// verdict and the fix and writes nothing; under `--bounce auto` it goes through host
/// memory, says why, and is verified.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn mixed_copies_p2p_where_possible_and_bounces_only_when_allowed() {
    let pairs = [("sw0", "sw1"), ("sw1", "sw0")];
    let mut script = pair_script(&pairs);
    script.push_str(
        r#"
refused() {
  S=$(ns $1); D=$(ns $2)
  fill $S 0 4194304
  before=$(md5 $D 0 4194304)
  p2pdma copy $S $D --length 4M --json > /tmp/never.json 2>/tmp/never.err; never=$?
  after=$(md5 $D 0 4194304)
  echo "NEVER $1 $2 $never $before $after"
  echo "NEVERERR $1 $2 $(one_line /tmp/never.err)"
  p2pdma copy $S $D --length 4M --bounce auto --verify --json > /tmp/auto.json 2>/tmp/auto.err; auto=$?
  echo "AUTO $1 $2 $auto $(md5 $S 0 4194304) $(md5 $D 0 4194304)"
  echo "AUTOJSON $1 $2 $(one_line /tmp/auto.json)"
  echo "AUTOERR $1 $2 $(one_line /tmp/auto.err)"
}
refused root0 sw0
refused sw1 nocmb0
"#,
    );
    let out = lab("mixed").run(&script);
    let stdout = &out.stdout;
    check_pairs(&out, &pairs);

    let never = lines(stdout, "NEVER");
    let never_err = lines(stdout, "NEVERERR");
    assert_eq!(never.len(), 2);
    for (n, e) in never.iter().zip(&never_err) {
        let what = format!("{} -> {}", n[0], n[1]);
        assert_ne!(n[2], "0", "{what}: --bounce never must fail");
        assert_eq!(n[3], n[4], "{what}: the destination changed");
        let msg = e[2..].join(" ");
        assert!(
            msg.contains("cannot take part in P2P") || msg.contains("refused P2P"),
            "{what}: {msg}"
        );
        assert!(
            msg.contains("--bounce auto"),
            "{what}: no way out named: {msg}"
        );
    }
    // root0 -> sw0 is tried and refused by the kernel (EREMOTEIO, or EINVAL from 6.17),
    // with the verdict's fix.
    let first = never_err[0][2..].join(" ");
    assert!(first.contains(p2p_refusal_errno().1), "{first}");
    assert!(first.contains("fix:"), "{first}");
    assert!(first.contains("0 B of"), "{first}");

    let auto = lines(stdout, "AUTO");
    let auto_json = lines(stdout, "AUTOJSON");
    assert_eq!(auto.len(), 2);
    for (a, j) in auto.iter().zip(&auto_json) {
        let what = format!("{} -> {}", a[0], a[1]);
        assert_eq!(a[2], "0", "{what}: --bounce auto must succeed");
        assert_eq!(a[3], a[4], "{what}: guest md5 differs");
        let j = json_after(&j[2..].join(" "));
        assert_eq!(j["mode"], "bounce", "{what}: {j}");
        assert_eq!(j["verified"], true, "{what}: {j}");
        assert!(
            j["bounce_reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: no reason given: {j}"
        );
    }
}

/// The `switch` pair with both disks formatted ext4 on the host before boot.
const EXT4_TOPOLOGY: &str = r#"
[copy-ext4]
description = "the switch pair, both namespaces formatted ext4 on the host"
bridge = [
  { id = "rp1", kind = "root-port", parent = "pcie.0", addr = "1", speed = "8", width = 4 },
  { id = "up1", kind = "switch-upstream", parent = "rp1" },
  { id = "dn1", kind = "switch-downstream", parent = "up1" },
  { id = "dn2", kind = "switch-downstream", parent = "up1" },
]
nvme = [
  { id = "nvme-a", serial = "sw0", parent = "dn1", cmb_mib = 16, format = "ext4" },
  { id = "nvme-b", serial = "sw1", parent = "dn2", cmb_mib = 16, format = "ext4" },
]
"#;

#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn p2p_copies_file_to_file_on_ext4() {
    let script = r#"
A=$(ns sw0); B=$(ns sw1)
mkdir -p /mnt/a /mnt/b
mount -t ext4 $A /mnt/a && mount -t ext4 $B /mnt/b || echo "MOUNTFAIL"
echo "FSTYPE $(grep /mnt/a /proc/mounts | cut -d' ' -f3) $(grep /mnt/b /proc/mounts | cut -d' ' -f3)"
dd if=/dev/urandom of=/mnt/a/src.bin bs=1M count=20 2>/dev/null; sync
p2pdma copy /mnt/a/src.bin /mnt/b/new.bin --force --verify --json > /tmp/new.json 2>/tmp/new.err
echo "NEW $? $(md5sum < /mnt/a/src.bin | cut -d' ' -f1) $(md5sum < /mnt/b/new.bin | cut -d' ' -f1) $(stat -c %s /mnt/b/new.bin)"
echo "NEWJSON $(one_line /tmp/new.json) $(one_line /tmp/new.err)"
dd if=/dev/zero of=/mnt/b/old.bin bs=1M count=16 2>/dev/null; sync
p2pdma copy /mnt/a/src.bin /mnt/b/old.bin --src-offset 4M --dst-offset 8M --length 8M --verify --json > /tmp/old.json 2>/tmp/old.err
echo "RANGE $? $(md5 /mnt/a/src.bin 4194304 8388608) $(md5 /mnt/b/old.bin 8388608 8388608) $(md5 /mnt/b/old.bin 0 8388608) $(zeros 8388608) $(stat -c %s /mnt/b/old.bin)"
echo "RANGEJSON $(one_line /tmp/old.json) $(one_line /tmp/old.err)"
umount /mnt/b
sync; echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 $B /mnt/b
echo "REMOUNT $(md5sum < /mnt/b/new.bin | cut -d' ' -f1)"
# A file that cannot fit: the copy stops at ENOSPC and says how far it got.
p2pdma copy $A /mnt/b/full.bin --length 48M --force --json > /tmp/full.json 2>/tmp/full.err
rc=$?; END=$(field contiguous_end /tmp/full.json)
# The source device is still mounted: its page cache holds ext4 metadata newer than the
# disk, so its prefix is read with O_DIRECT, as the copy read it.
src_sum=$(dd if=$A bs=4096 count=$((END / 4096)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "FULL $rc $END $(field failure_kind /tmp/full.json) $src_sum $(md5 /mnt/b/full.bin 0 $END)"
echo "FULLERR $(one_line /tmp/full.err)"
"#;
    let out = lab("copy-ext4").topologies(EXT4_TOPOLOGY).run(script);
    let stdout = &out.stdout;
    assert!(!stdout.contains("MOUNTFAIL"), "mounting failed");
    assert_eq!(lines(stdout, "FSTYPE"), vec![vec!["ext4", "ext4"]]);

    let new = &lines(stdout, "NEW")[0];
    assert_eq!(new[0], "0", "copy into a new file failed");
    assert_eq!(new[1], new[2], "guest md5 of the files differ");
    assert_eq!(new[3], (20 << 20).to_string());
    let j = json_after(&lines(stdout, "NEWJSON")[0].join(" "));
    assert_eq!(j["mode"], "p2p", "{j}");
    assert_eq!(j["verified"], true, "{j}");

    let range = &lines(stdout, "RANGE")[0];
    assert_eq!(range[0], "0", "range copy between files failed");
    assert_eq!(range[1], range[2], "guest md5 of the ranges differ");
    assert_eq!(range[3], range[4], "bytes before --dst-offset changed");
    assert_eq!(range[5], (16 << 20).to_string(), "the file must not grow");
    let j = json_after(&lines(stdout, "RANGEJSON")[0].join(" "));
    assert_eq!(j["mode"], "p2p", "{j}");
    assert_eq!(j["verified"], true, "{j}");

    assert_eq!(
        lines(stdout, "REMOUNT")[0][0],
        new[1],
        "the new file's content did not survive a remount"
    );

    let full = &lines(stdout, "FULL")[0];
    assert_ne!(full[0], "0", "a copy larger than the free space must fail");
    let end: u64 = full[1].parse().expect("contiguous_end in the failure JSON");
    assert!(end > 0 && end < 48 << 20, "contiguous_end {end}");
    assert_eq!(full[2], "no_space");
    assert_eq!(
        full[0], "4",
        "some bytes were written: a partial copy exits 4"
    );
    assert_eq!(
        full[3], full[4],
        "the reported prefix is not the source's bytes"
    );
    let err = lines(stdout, "FULLERR")[0].join(" ");
    assert!(err.contains("is full"), "{err}");
    assert!(err.contains("No space left"), "{err}");
}

/// Every refusal happens before any write: exit non-zero, a one-line message naming the
/// device and what to do, and the destination's checksum unchanged.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn refusals_and_unaligned_input_write_nothing() {
    let script = r#"
A=$(ns sw0); B=$(ns sw1)
fill $A 0 67108864
fill $B 0 67108864
check() {
  name=$1; shift
  before=$(md5 $DST 0 67108864)
  p2pdma copy "$@" > /tmp/out.txt 2>/tmp/err.txt; rc=$?
  after=$(md5 $DST 0 67108864)
  echo "CASE $name $rc $before $after $(wc -l < /tmp/err.txt) $(one_line /tmp/err.txt)"
}
DST=$B
check src-offset   $A $B --src-offset 100 --length 1M
check dst-offset   $A $B --dst-offset 1000 --length 1M
check length       $A $B --length 1000
check chunk-size   $A $B --length 1M --chunk-size 1000
check past-end     $A $B --dst-offset 60M --length 8M
check past-end-force $A $B --dst-offset 60M --length 8M --force
check src-past-end $A $B --src-offset 60M --length 8M
check overlap      $B $B --src-offset 0 --dst-offset 1M --length 4M
check depth        $A $B --length 1M --queue-depth 0
blockdev --setro $B
check read-only    $A $B --length 1M
blockdev --setrw $B
check dry-run      $A $B --length 8M --dry-run
mkdir -p /mnt/b
mke2fs -q $B >/dev/null 2>&1 && mount $B /mnt/b && echo MOUNTED
dd if=/dev/urandom of=/mnt/b/small.bin bs=4096 count=16 2>/dev/null; sync
SMALLBEFORE=$(md5sum < /mnt/b/small.bin | cut -d' ' -f1)
p2pdma copy $A /mnt/b/small.bin --length 1M > /dev/null 2>/tmp/err.txt; rc=$?
echo "CASE grow-file $rc $SMALLBEFORE $(md5sum < /mnt/b/small.bin | cut -d' ' -f1) $(wc -l < /tmp/err.txt) $(one_line /tmp/err.txt)"
p2pdma copy $A /mnt/b/missing.bin --length 1M > /dev/null 2>/tmp/err.txt; rc=$?
echo "CASE missing-file $rc $(ls /mnt/b/missing.bin 2>/dev/null | wc -l) 0 $(wc -l < /tmp/err.txt) $(one_line /tmp/err.txt)"
# Read-only, so that the filesystem itself leaves the device alone while it is checksummed.
mount -o remount,ro /mnt/b && sync
DST=$B
check mounted      $A $B --length 1M --force
"#;
    let out = lab("switch").run(script);
    let stdout = &out.stdout;
    let cases = out.keyed("CASE");
    let expect = |name: &str, words: &[&str]| {
        let f = cases
            .get(name)
            .unwrap_or_else(|| panic!("case {name} did not run"));
        let msg = f[4..].join(" ");
        assert_ne!(f[0], "0", "{name}: must fail: {msg}");
        assert_eq!(f[1], f[2], "{name}: the destination changed");
        assert_eq!(f[3], "1", "{name}: the message must be one line: {msg}");
        for w in words {
            assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
        }
    };
    expect(
        "src-offset",
        &["--src-offset 100", "multiple of 512", "/dev/nvme"],
    );
    expect("dst-offset", &["--dst-offset 1000", "multiple of 512"]);
    expect("length", &["--length 1000", "multiple of 512"]);
    expect("chunk-size", &["--chunk-size 1000", "multiple of 512"]);
    expect("past-end", &["only 67108864 bytes", "smaller --length"]);
    expect(
        "past-end-force",
        &["--force does not apply to block devices"],
    );
    expect("src-past-end", &["past the end of"]);
    expect("overlap", &["overlaps the source range"]);
    expect("depth", &["--queue-depth 0"]);
    expect("read-only", &["read-only", "--setrw"]);
    expect("mounted", &["is mounted on /mnt/b", "unmount it first"]);
    expect("grow-file", &["would grow", "pass --force"]);
    expect("missing-file", &["would be created", "pass --force"]);
    assert_eq!(
        cases["missing-file"][1], "0",
        "the missing file was created"
    );

    let dry = &cases["dry-run"];
    assert_eq!(dry[0], "0", "dry run fails: {dry:?}");
    assert_eq!(dry[1], dry[2], "dry run wrote");
    assert!(stdout.contains("MOUNTED"), "mke2fs/mount failed");
}

/// Unbinding the provider in the middle of a copy: the copy stops with "provider gone",
/// reports exactly which destination bytes were written, those bytes are the source's,
/// and every other destination byte is untouched.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn unbinding_the_provider_mid_copy_reports_the_exact_written_range() {
    let script = r#"
S=$(ns cas-a0); D=$(ns cas-a1); P=$(bdf cas-b0)
fill $S 0 67108864
dd if=/dev/zero of=$D bs=1M count=64 2>/dev/null
p2pdma copy $S $D --provider $P --chunk-size 16k --queue-depth 1 --json > /tmp/out.json 2>/tmp/err.txt &
pid=$!
# Unbind once the copy has mapped its p2pmem buffers and had a second to write (a fixed
# sleep alone came too early once, at load 20, before the copy had even started).
waited=0
while ! grep -q p2pmem/allocate /proc/$pid/maps 2>/dev/null && [ $waited -lt 600 ]; do
  sleep 0.1; waited=$((waited + 1))
done
sleep 1
p2pdma lab guest unbind cas-b0
wait $pid; rc=$?
END=$(field contiguous_end /tmp/out.json)
TOTAL=$(field bytes_written /tmp/out.json)
echo "RESULT $rc $END $TOTAL $(field failure_kind /tmp/out.json)"
echo "PREFIX $(md5 $S 0 $END) $(md5 $D 0 $END)"
REST=$((67108864 - END))
echo "REST $(md5 $D $END $REST) $(zeros $REST)"
echo "ERR $(one_line /tmp/err.txt)"
"#;
    let out = lab("cascade").run(script);
    let stdout = &out.stdout;
    let result = &lines(stdout, "RESULT")[0];
    assert_ne!(result[0], "0", "the copy must fail");
    let end: u64 = result[1].parse().expect("contiguous_end in the JSON");
    let total: u64 = result[2].parse().expect("bytes_written in the JSON");
    assert!(
        end > 0 && end < 64 << 20,
        "unbind came too early or too late: {end}"
    );
    assert_eq!(
        end, total,
        "queue depth 1 writes in order: one contiguous range"
    );
    assert_eq!(result[3], "provider_gone");
    assert_eq!(
        result[0], "4",
        "some bytes were written: a partial copy exits 4"
    );
    let prefix = &lines(stdout, "PREFIX")[0];
    assert_eq!(
        prefix[0], prefix[1],
        "the reported prefix is not the source's"
    );
    let rest = &lines(stdout, "REST")[0];
    assert_eq!(rest[0], rest[1], "bytes past the reported range changed");
    let err = lines(stdout, "ERR")[0].join(" ");
    assert!(err.contains("unbound or removed"), "{err}");
    assert!(
        err.contains(&format!("contiguous from offset 0 to {end}")),
        "{err}"
    );
}

/// A partition's bytes are its disk's bytes from the partition's start: overlap is found
/// across the two names, and a mounted partition protects the whole disk.
#[test]
#[ignore = "lab: boots a QEMU guest; run with --include-ignored"]
fn partitions_map_onto_their_disk_for_overlap_and_mounts() {
    let script = r#"
A=$(ns sw0); B=$(ns sw1)
fill $A 0 67108864
# One partition from sector 2048 (1 MiB) for 16 MiB.
printf 'o\nn\np\n1\n2048\n+16M\nw\n' | fdisk $B >/dev/null 2>&1
P=${B}p1
echo "PART $(cat /sys/class/block/$(basename $P)/start 2>/dev/null)"
# Random bytes everywhere but the partition table in the first MiB.
fill $B 1048576 66060288
case_md5() {
  name=$1; shift
  before=$(md5 $B 0 67108864)
  p2pdma copy "$@" > /tmp/out.txt 2>/tmp/err.txt; rc=$?
  echo "CASE $name $rc $before $(md5 $B 0 67108864) $(one_line /tmp/err.txt)"
}
# The disk's 1 MiB..2 MiB is the partition's 0..1 MiB.
case_md5 overlap $B $P --src-offset 1M --dst-offset 512k --length 1M
case_md5 overlap-reverse $P $B --src-offset 0 --dst-offset 1536k --length 1M
# Disjoint: the disk's 32 MiB into the partition's start, by P2P inside one controller.
p2pdma copy $B $P --src-offset 32M --length 1M --verify --json > /tmp/ok.json 2>/tmp/ok.err
echo "DISJOINT $? $(md5 $B 33554432 1048576) $(md5 $P 0 1048576) $(md5 $B 1048576 1048576)"
echo "DISJOINTJSON $(one_line /tmp/ok.json) $(one_line /tmp/ok.err)"
mkdir -p /mnt/p
mke2fs -q $P >/dev/null 2>&1 && mount -o ro $P /mnt/p && echo MOUNTED
case_md5 mounted-partition $A $B --src-offset 0 --dst-offset 32M --length 1M
"#;
    let out = lab("switch").run(script);
    let stdout = &out.stdout;
    assert_eq!(
        lines(stdout, "PART")[0][0],
        "2048",
        "fdisk made no partition"
    );
    assert!(
        stdout.contains("MOUNTED"),
        "mke2fs/mount of the partition failed"
    );
    let cases = out.keyed("CASE");
    for (name, words) in [
        ("overlap", &["overlaps the source range"][..]),
        ("overlap-reverse", &["overlaps the source range"][..]),
        (
            "mounted-partition",
            &["p1 is mounted on /mnt/p", "unmount it first"][..],
        ),
    ] {
        let f = &cases[name];
        let msg = f[3..].join(" ");
        assert_ne!(f[0], "0", "{name}: must fail: {msg}");
        assert_eq!(f[1], f[2], "{name}: the disk changed");
        for w in words {
            assert!(msg.contains(w), "{name}: {msg:?} lacks {w:?}");
        }
    }
    let d = &lines(stdout, "DISJOINT")[0];
    assert_eq!(d[0], "0", "the disjoint copy failed");
    assert_eq!(
        d[1], d[2],
        "partition start does not hold the disk's 32 MiB"
    );
    assert_eq!(d[2], d[3], "the partition's 0 is not the disk's 1 MiB");
    let j = json_after(&lines(stdout, "DISJOINTJSON")[0].join(" "));
    assert_eq!(j["mode"], "p2p", "{j}");
    assert_eq!(j["verified"], true, "{j}");
}
