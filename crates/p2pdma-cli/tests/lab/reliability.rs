//! The seed thread's teardown races, exercised in the lab: the p2pmem provider unbound or
//! hot-removed while buffers are mapped and while O_DIRECT I/O through them is in flight,
//! the destination removed mid-copy, a process killed with I/O in flight, repeated
//! map/unbind/rebind cycles, O_DIRECT reads into p2pmem racing repeated unbinds; and
//! the pool and concurrency limits: many processes exhausting one pool, eight verified
//! copies at once. Nothing may crash, hang or be lost:
//!
//! - every unbind and removal returns within a deadline (timed in the guest);
//! - a copy that stops reports exactly which destination bytes it wrote, those bytes are
//!   the source's (checked in the guest and again on the host in the kept disk images),
//!   and no other destination byte changed;
//! - the provider's pool `available` comes back to its value at boot;
//! - the guest kernel logs no BUG, WARNING, KASAN, oops, hung task or lockdep report.
//!
//! Every scenario runs twice: on the standard lab kernel (`standard::NAME`) and on the
//! debug kernel (`debug::NAME`: KASAN, lockdep, DEBUG_VM, hung tasks panic), which
//! `lab run` builds on first use. RELIABILITY.md has the measured cost and the results.

use p2pdma_lab::check::scenarios::{TOPOLOGY, TOPOLOGY_NAME};

use crate::harness::{json_after, kernel_log_problems, read_range, Flavour, Lab, LabRun};

/// Guest shell helpers, installed in /root/lib.sh after the harness's own and sourced by
/// every script (and by commands that `p2pdma mem test --while-mapped` runs). `fill DEV
/// LEN` here takes the place of the harness's range form: O_DIRECT from offset 0, so the
/// data is on the device before a copy reads it with O_DIRECT.
///
/// Helpers keep their counters `local`: a caller's loop variable survives them.
/// Every wait has a deadline; a step that misses it prints `KEY hung` instead of its
/// time, so a hang is reported, not waited out. The hung-task detector is set to 20 s,
/// below those deadlines, so a task stuck in the kernel is also reported by the kernel
/// (and panics the debug kernel).
const GUEST_LIB: &str = r#"
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
fill() { dd if=/dev/urandom of="$1" bs=1M count=$(($2 / 1048576)) oflag=direct 2>/dev/null; }
available() { cat /sys/bus/pci/devices/$1/p2pmem/available 2>/dev/null || echo none; }
sectors_written() { awk '{print $7}' /sys/block/${1#/dev/}/stat; }
inflight() { awk '{print $1 "r/" $2 "w"}' /sys/block/${1#/dev/}/inflight; }
# wait_progress DEV BASE: until DEV has written 4 MiB more than BASE sectors (30 s).
wait_progress() {
  local n=0
  while [ $(( $(sectors_written $1) - $2 )) -lt 8192 ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
}
# timed_unbind KEY BDF: unbinds BDF from its driver in the background and prints
# "KEY STATUS SECONDS", or "KEY hung" when the unbind has not returned after 60 s.
timed_unbind() {
  rm -f /tmp/unbind.done /tmp/unbind.tmp
  ( t0=$(now); echo "$2" > /sys/bus/pci/devices/$2/driver/unbind; rc=$?
    echo "$rc $(since $t0)" > /tmp/unbind.tmp; mv /tmp/unbind.tmp /tmp/unbind.done ) &
  local n=0
  while [ ! -e /tmp/unbind.done ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done
  if [ -e /tmp/unbind.done ]; then echo "$1 $(cat /tmp/unbind.done)"; else echo "$1 hung"; fi
}
# wait_gone KEY BDF: until the PCI function is gone: "KEY SECONDS" or "KEY hung" (60 s).
wait_gone() {
  local t0=$(now) n=0
  while [ -e /sys/bus/pci/devices/$2 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
  if [ -e /sys/bus/pci/devices/$2 ]; then echo "$1 hung"; else echo "$1 $(since $t0)"; fi
}
# rebind SERIAL BDF: binds BDF to nvme again and waits until its namespace is back, so
# the driver has finished placing its queues (which may take CMB) (30 s).
rebind() {
  echo "$2" > /sys/bus/pci/drivers/nvme/bind
  local n=0
  while [ -z "$(p2pdma lab guest nvme $1 2>/dev/null | awk '{print $3}')" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
}
[ -w /proc/sys/kernel/hung_task_timeout_secs ] && echo 20 > /proc/sys/kernel/hung_task_timeout_secs
"#;

fn lab(flavour: Flavour) -> Lab {
    // `lab check`'s teardown topology: a switch with three controllers, the copy's
    // source and destination (`chk-src`, `chk-dst`) and a third one (`chk-prov`) whose CMB
    // carries the data, so the provider can go away while both disks stay (and the other
    // way round).
    Lab::new(TOPOLOGY_NAME, flavour)
        .topologies(TOPOLOGY)
        .helpers(GUEST_LIB)
}

/// Seconds from a `KEY STATUS SECONDS` line of `timed_unbind`; fails on `hung` or a
/// failed write.
fn unbind_seconds(run: &LabRun, key: &str) -> f64 {
    let f = run.line(key);
    assert_ne!(f[0], "hung", "{key}: the unbind did not return within 60 s");
    assert_eq!(f[0], "0", "{key}: writing to the driver's unbind failed");
    f[1].parse().unwrap()
}

/// Seconds from a `KEY SECONDS` line of `wait_gone`; fails on `hung`.
fn removal_seconds(run: &LabRun, key: &str) -> f64 {
    let f = run.line(key);
    assert_ne!(
        f[0], "hung",
        "{key}: the device was still there 60 s after the removal began"
    );
    f[0].parse().unwrap()
}

fn number(line: &[&str], what: &str) -> u64 {
    line.first()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{what}: not a number: {line:?}"))
}

/// What a copy that stopped part-way said on stdout (`--json`) and stderr.
struct StoppedCopy {
    summary: serde_json::Value,
    stderr: String,
    written: Vec<(u64, u64)>,
}

/// Reads the `COPY_RC`, `COPY_JSON` and `COPY_ERR` lines and checks the copy failed
/// with a failure summary.
fn stopped_copy(run: &LabRun, length: u64) -> StoppedCopy {
    let rc = run.line("COPY_RC");
    assert_ne!(
        rc[0], "0",
        "the copy succeeded: the fault came too late to test anything"
    );
    // The contract: one document, {"error": {...}}, on failure too.
    let summary = json_after(&run.line("COPY_JSON").join(" "))["error"].clone();
    assert!(summary.is_object(), "no error object on stdout");
    let stderr = run.line("COPY_ERR").join(" ");
    let written: Vec<(u64, u64)> = summary["written"]
        .as_array()
        .unwrap_or_else(|| panic!("no written ranges in {summary}"))
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
        .collect();
    let total: u64 = written.iter().map(|(a, b)| b - a).sum();
    assert_eq!(
        summary["bytes_written"].as_u64(),
        Some(total),
        "bytes_written is not the sum of the ranges: {summary}"
    );
    assert!(
        total > 0 && total < length,
        "the fault must land mid-copy: {total} of {length} bytes written"
    );
    assert!(
        stderr.contains(&format!("contiguous from offset 0 to {}", written[0].1))
            || written[0].0 != 0,
        "stderr does not name the written range: {stderr}"
    );
    StoppedCopy {
        summary,
        stderr,
        written,
    }
}

/// Compares the kept disk images: every range the copy reported is the source's bytes,
/// and every other chunk of the destination range is untouched (still zero: the
/// images start empty) — except that up to `unacknowledged` chunks the copy did not
/// report may hold the source's bytes (writes the device took but never completed to
/// the host). Returns how many such chunks there were.
fn check_destination_image(
    run: &LabRun,
    written: &[(u64, u64)],
    length: u64,
    chunk: u64,
    unacknowledged: usize,
) -> usize {
    let src = read_range(&run.disk("nvme-src"), 0, length);
    let dst = read_range(&run.disk("nvme-dst"), 0, length);
    for &(start, end) in written {
        let (a, b) = (start as usize, end as usize);
        if let Some(i) = (a..b).find(|&i| src[i] != dst[i]) {
            panic!("reported as written [{start}, {end}), but destination byte {i} differs from the source");
        }
    }
    let reported = |offset: u64| written.iter().any(|&(a, b)| offset >= a && offset < b);
    let mut landed = 0;
    for offset in (0..length).step_by(chunk as usize) {
        if reported(offset) {
            continue;
        }
        let range = offset as usize..(offset + chunk).min(length) as usize;
        if dst[range.clone()].iter().all(|&b| b == 0) {
            continue;
        }
        assert_eq!(
            dst[range.clone()],
            src[range],
            "destination chunk at {offset} was changed, not reported, and is not the source's"
        );
        landed += 1;
    }
    assert!(
        landed <= unacknowledged,
        "{landed} unreported chunks changed (at most {unacknowledged} may be in flight)"
    );
    landed
}

/// Starts `p2pdma copy` of LEN bytes from chk-src to chk-dst through chk-prov's CMB in the
/// background and waits until 4 MiB have reached the destination.
fn copy_in_background(chunk: &str, queue_depth: u32) -> String {
    format!(
        r#"S=$(ns chk-src); D=$(ns chk-dst); P=$(bdf chk-prov); DB=$(bdf chk-dst)
echo "POOL_START $(available $P)"
fill $S $LEN
w0=$(sectors_written $D)
p2pdma copy $S $D --provider $P --length $LEN --chunk-size {chunk} --queue-depth {queue_depth} --json > /tmp/copy.json 2>/tmp/copy.err &
pid=$!
wait_progress $D $w0
echo "INFLIGHT $(inflight $S) $(inflight $D)"
"#
    )
}

const COPY_RESULT: &str = r#"
wait $pid; echo "COPY_RC $?"
echo "COPY_JSON $(one_line /tmp/copy.json)"
echo "COPY_ERR $(one_line /tmp/copy.err)"
"#;

const MIB: u64 = 1 << 20;

fn unbinding_the_provider_while_a_copy_is_in_flight_returns_and_loses_nothing(flavour: Flavour) {
    let length = 128 * MIB;
    let body = format!(
        "LEN={length}\n{}timed_unbind UNBIND $P\n{COPY_RESULT}{}",
        copy_in_background("1M", 4),
        r#"END=$(field contiguous_end /tmp/copy.json)
echo "PREFIX $(md5 $S 0 $END) $(md5 $D 0 $END)"
rebind chk-prov $P
echo "POOL_REBOUND $(available $P)"
timed_unbind UNBIND_IDLE $P
rebind chk-prov $P
echo "POOL_END $(available $P)"
"#
    );
    let run = lab(flavour).args(&["--keep-disks"]).run(&body);

    let with_io = unbind_seconds(&run, "UNBIND");
    let idle = unbind_seconds(&run, "UNBIND_IDLE");
    let copy = stopped_copy(&run, length);
    assert_eq!(
        copy.summary["failure_kind"], "provider_gone",
        "{}",
        copy.summary
    );
    assert!(
        copy.stderr.contains("unbound or removed"),
        "{}",
        copy.stderr
    );
    let prefix = run.line("PREFIX");
    assert_eq!(
        prefix[0], prefix[1],
        "guest md5: the reported prefix is not the source's"
    );
    // The unbind waited for the in-flight requests: they completed and were reported.
    let landed = check_destination_image(&run, &copy.written, length, MIB, 0);
    let start = number(&run.line("POOL_START"), "POOL_START");
    assert_eq!(number(&run.line("POOL_REBOUND"), "POOL_REBOUND"), start);
    assert_eq!(number(&run.line("POOL_END"), "POOL_END"), start);
    run.assert_kernel_log_clean();
    eprintln!(
        "FIGURE unbind-provider-mid-copy flavour={} unbind_with_io_s={with_io} unbind_idle_s={idle} \
         written={} inflight_at_unbind={:?} unreported_landed={landed}",
        run.flavour().name(),
        copy.summary["bytes_written"],
        run.line("INFLIGHT"),
    );
}

fn hot_removing_the_provider_while_a_copy_is_in_flight_loses_nothing(flavour: Flavour) {
    // 4 KiB chunks make the copy outlast pciehp's 5 s attention-button delay.
    let length = 256 * MIB;
    let body = format!(
        "LEN={length}\n{}p2pdma lab guest signal remove\nwait_gone GONE $P\n{COPY_RESULT}{}",
        copy_in_background("4k", 4),
        r#"END=$(field contiguous_end /tmp/copy.json)
echo "PREFIX $(md5 $S 0 $END) $(md5 $D 0 $END)"
"#
    );
    let run = lab(flavour)
        .args(&[
            "--keep-disks",
            "--fault",
            "device_del:nvme-prov@signal:remove",
        ])
        .run(&body);

    let gone = removal_seconds(&run, "GONE");
    let copy = stopped_copy(&run, length);
    assert_eq!(
        copy.summary["failure_kind"], "provider_gone",
        "{}",
        copy.summary
    );
    let prefix = run.line("PREFIX");
    assert_eq!(
        prefix[0], prefix[1],
        "guest md5: the reported prefix is not the source's"
    );
    let landed = check_destination_image(&run, &copy.written, length, 4096, 0);
    run.assert_kernel_log_clean();
    eprintln!(
        "FIGURE hot-remove-provider-mid-copy flavour={} removal_s={gone} written={} inflight={:?} unreported_landed={landed}",
        run.flavour().name(),
        copy.summary["bytes_written"],
        run.line("INFLIGHT"),
    );
}

fn hot_removing_the_destination_while_a_copy_is_in_flight_loses_nothing(flavour: Flavour) {
    let length = 256 * MIB;
    let queue_depth = 4;
    let body = format!(
        "LEN={length}\n{}p2pdma lab guest signal remove\nwait_gone GONE $DB\n{COPY_RESULT}{}",
        copy_in_background("4k", queue_depth),
        r#"echo "POOL_AFTER $(available $P)"
"#
    );
    let run = lab(flavour)
        .args(&[
            "--keep-disks",
            "--fault",
            "device_del:nvme-dst@signal:remove",
        ])
        .run(&body);

    let gone = removal_seconds(&run, "GONE");
    let copy = stopped_copy(&run, length);
    let message = copy.summary["message"].as_str().unwrap();
    assert!(
        message.contains("write of") && message.contains("/dev/nvme"),
        "the failure must be the destination's write: {message}"
    );
    assert!(
        copy.stderr.contains("removed") && !copy.stderr.contains("is full"),
        "a destination that went away must be reported as gone, not full: {}",
        copy.stderr
    );
    // The destination is gone from the guest: its bytes are checked in the disk image.
    let landed = check_destination_image(&run, &copy.written, length, 4096, queue_depth as usize);
    let start = number(&run.line("POOL_START"), "POOL_START");
    assert_eq!(
        number(&run.line("POOL_AFTER"), "POOL_AFTER"),
        start,
        "the provider's pool did not get its buffers back"
    );
    run.assert_kernel_log_clean();
    eprintln!(
        "FIGURE hot-remove-destination-mid-copy flavour={} removal_s={gone} written={} kind={} unreported_landed={landed}",
        run.flavour().name(),
        copy.summary["bytes_written"],
        copy.summary["failure_kind"],
    );
}

fn killing_a_process_with_io_in_flight_then_unbinding_returns_every_byte_to_the_pool(
    flavour: Flavour,
) {
    let length = 128 * MIB;
    let body = format!(
        "LEN={length}\n{}{}",
        copy_in_background("1M", 4),
        r#"kill -9 $pid
timed_unbind UNBIND $P
wait $pid; echo "KILLED_RC $?"
rebind chk-prov $P
echo "POOL_REBOUND $(available $P)"
p2pdma mem test $P --buffers 4 --size 1048576 --while-mapped 'kill -9 $PPID' > /dev/null 2>&1
echo "MAPKILL_RC $?"
echo "POOL_AFTER_MAPKILL $(available $P)"
timed_unbind UNBIND_AFTER_MAPKILL $P
rebind chk-prov $P
echo "POOL_END $(available $P)"
"#
    );
    let run = lab(flavour).run(&body);

    let with_io = unbind_seconds(&run, "UNBIND");
    assert_eq!(
        run.line("KILLED_RC"),
        ["137"],
        "the copy was not killed by SIGKILL"
    );
    assert_eq!(
        run.line("MAPKILL_RC"),
        ["137"],
        "mem test was not killed while mapped"
    );
    let after_mapkill = unbind_seconds(&run, "UNBIND_AFTER_MAPKILL");
    let start = number(&run.line("POOL_START"), "POOL_START");
    assert_eq!(number(&run.line("POOL_REBOUND"), "POOL_REBOUND"), start);
    assert_eq!(
        number(&run.line("POOL_AFTER_MAPKILL"), "POOL_AFTER_MAPKILL"),
        start,
        "a killed process's mappings did not return to the pool"
    );
    assert_eq!(number(&run.line("POOL_END"), "POOL_END"), start);
    run.assert_kernel_log_clean();
    eprintln!(
        "FIGURE kill-9-then-unbind flavour={} unbind_after_kill_with_io_s={with_io} unbind_after_mapped_kill_s={after_mapkill} inflight_at_kill={:?}",
        run.flavour().name(),
        run.line("INFLIGHT"),
    );
}

fn twenty_map_unbind_rebind_cycles_leak_nothing(flavour: Flavour) {
    let cycles = 20;
    let body = format!(
        r#"P=$(bdf chk-prov)
echo "POOL_START $(available $P)"
i=1
while [ $i -le {cycles} ]; do
  p2pdma mem test $P --buffers 2 --size 1048576 --json --while-mapped ". /root/lib.sh; timed_unbind UNBIND $P" > /tmp/mt.out 2>/tmp/mt.err
  rc=$?
  echo "CYCLE $i $rc $(grep '^UNBIND ' /tmp/mt.out | cut -d' ' -f2-)"
  echo "CYCLEJSON $i $(grep '^{{' /tmp/mt.out)"
  rebind chk-prov $P
  echo "CYCLEPOOL $i $(available $P)"
  i=$((i+1))
done
p2pdma mem test $P --buffers 2 --size 1048576 --json > /tmp/final.json; echo "FINAL_RC $?"
echo "FINAL $(one_line /tmp/final.json)"
"#
    );
    let run = lab(flavour).args(&["--timeout", "1200"]).run(&body);

    let start = number(&run.line("POOL_START"), "POOL_START");
    let cycle_lines = run.lines("CYCLE");
    let pools = run.lines("CYCLEPOOL");
    let jsons = run.lines("CYCLEJSON");
    assert_eq!(cycle_lines.len(), cycles, "not every cycle ran");
    assert_eq!(pools.len(), cycles);
    let mut unbind_times = Vec::new();
    for (i, ((c, pool), json)) in cycle_lines.iter().zip(&pools).zip(&jsons).enumerate() {
        let n = i + 1;
        assert_eq!(c[1], "0", "cycle {n}: mem test failed: {c:?}");
        assert_eq!(
            c.get(2),
            Some(&"0"),
            "cycle {n}: the unbind failed or hung: {c:?}"
        );
        unbind_times.push(c[3].parse::<f64>().unwrap());
        let report = json_after(&json[1..].join(" "));
        assert_eq!(
            report["while_mapped"]["read_results"],
            serde_json::json!(["revoked", "revoked"]),
            "cycle {n}: {report}"
        );
        assert_eq!(
            number(&pool[1..], "CYCLEPOOL"),
            start,
            "cycle {n}: the pool did not come back whole"
        );
    }
    assert_eq!(run.line("FINAL_RC"), ["0"]);
    let last = json_after(&run.line("FINAL").join(" "));
    assert_eq!(last["available_before"].as_u64(), Some(start), "{last}");
    assert_eq!(last["available_after"].as_u64(), Some(start), "{last}");
    run.assert_kernel_log_clean();
    unbind_times.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE map-unbind-rebind-cycles flavour={} cycles={cycles} unbind_while_mapped_s min={} median={} max={}",
        run.flavour().name(),
        unbind_times[0],
        unbind_times[cycles / 2],
        unbind_times[cycles - 1],
    );
}

/// The seed thread's other half: new mappings racing the teardown. Processes map and
/// unmap in a loop while the provider is unbound and rebound; each mmap() either fails
/// (ENODEV once the pgmap's ref is dead, or the pool is gone) or succeeds and is
/// revoked. No process may die of a signal, no unbind may hang, no byte may leak.
fn mapping_while_the_provider_is_unbound_fails_cleanly_or_is_revoked(flavour: Flavour) {
    let rounds = 5;
    let body = format!(
        r#"P=$(bdf chk-prov)
echo "POOL_START $(available $P)"
rm -f /tmp/stop /tmp/rcs /tmp/errs
( while [ ! -e /tmp/stop ]; do
    p2pdma mem test $P --buffers 2 --size 65536 --json > /tmp/out1 2>/tmp/err1; rc=$?
    echo $rc >> /tmp/rcs
    if [ -s /tmp/err1 ]; then head -1 /tmp/err1 >> /tmp/errs
    elif [ $rc != 0 ]; then echo "report: $(grep -o '"failures":.*' /tmp/out1)" >> /tmp/errs; fi
  done ) &
loop=$!
r=1
while [ $r -le {rounds} ]; do
  sleep 0.5
  timed_unbind UNBIND $P
  sleep 0.3
  rebind chk-prov $P
  r=$((r+1))
done
touch /tmp/stop; wait $loop
echo "RCS $(sort /tmp/rcs | uniq -c | tr -s ' \n' ' ')"
sort /tmp/errs | uniq -c | sed 's/^ */ERRS /'
echo "POOL_END $(available $P)"
p2pdma mem test $P --buffers 2 --size 65536 > /dev/null 2>&1; echo "AFTER_RC $?"
"#
    );
    let run = lab(flavour).run(&body);

    let unbinds = run.lines("UNBIND");
    assert_eq!(unbinds.len(), rounds, "not every round ran");
    let mut times = Vec::new();
    for u in &unbinds {
        assert_ne!(u[0], "hung", "an unbind did not return within 60 s");
        assert_eq!(u[0], "0", "an unbind failed: {u:?}");
        times.push(u[1].parse::<f64>().unwrap());
    }
    // "RCS count rc count rc ...": how many mem test runs ended with each status.
    let rcs = run.line("RCS");
    let outcomes: Vec<(u64, i32)> = rcs
        .chunks(2)
        .map(|c| (c[0].parse().unwrap(), c[1].parse().unwrap()))
        .collect();
    for &(count, rc) in &outcomes {
        assert!(
            rc == 0 || rc == 1,
            "{count} mem test runs ended with status {rc} (a signal or a usage error)"
        );
    }
    let runs: u64 = outcomes.iter().map(|(n, _)| n).sum();
    let failed: u64 = outcomes
        .iter()
        .filter(|(_, rc)| *rc == 1)
        .map(|(n, _)| n)
        .sum();
    assert!(
        failed > 0,
        "no mem test run met an unbound provider: the race was not exercised"
    );
    let start = number(&run.line("POOL_START"), "POOL_START");
    assert_eq!(number(&run.line("POOL_END"), "POOL_END"), start);
    assert_eq!(
        run.line("AFTER_RC"),
        ["0"],
        "mapping after the storm failed"
    );
    run.assert_kernel_log_clean();
    for e in run.lines("ERRS") {
        eprintln!("FIGURE map-storm-during-unbind error: {}", e.join(" "));
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE map-storm-during-unbind flavour={} rounds={rounds} mem_test_runs={runs} failed_cleanly={failed} unbind_s min={} max={}",
        run.flavour().name(),
        times[0],
        times[rounds - 1],
    );
}

/// Many processes allocate from one provider at once until the pool refuses: each
/// refusal is a one-line error (and a JSON error object) naming the provider and the
/// pool's free bytes, with exit status 1 (a generic failure in README's table); the
/// processes that got their buffers hold the right data; the pool's `available` is its
/// starting value less exactly what the holders hold, and whole again once they exit.
fn many_processes_exhausting_one_pool_fail_clearly_and_leak_nothing(flavour: Flavour) {
    let processes = 8;
    // 4 MiB per process: 32 MiB asked of a 16 MiB pool.
    let buffers = 4;
    let body = format!(
        r#"P=$(bdf chk-prov)
echo "PROVIDER $P"
echo "POOL_START $(available $P)"
rm -f /tmp/held.* /tmp/ex.* /tmp/release
i=1
while [ $i -le {processes} ]; do
  ( p2pdma lab guest hold $P --buffers {buffers} --size 1M --json \
      --ready-file /tmp/held.$i --release-file /tmp/release > /tmp/ex.$i.out 2> /tmp/ex.$i.err
    echo $? > /tmp/ex.$i.rc ) &
  i=$((i+1))
done
# Until every process holds its buffers or has exited (60 s).
n=0
while [ $(( $(ls /tmp/held.* 2>/dev/null | wc -l) + $(ls /tmp/ex.*.rc 2>/dev/null | wc -l) )) -lt {processes} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
echo "HOLDING $(ls /tmp/held.* 2>/dev/null | wc -l) EXITED $(ls /tmp/ex.*.rc 2>/dev/null | wc -l)"
echo "POOL_HELD $(available $P)"
touch /tmp/release
wait
i=1
while [ $i -le {processes} ]; do
  echo "PROC $i $(cat /tmp/ex.$i.rc) $(one_line /tmp/ex.$i.out)"
  echo "PROCERR $i $(one_line /tmp/ex.$i.err)"
  i=$((i+1))
done
echo "POOL_END $(available $P)"
"#
    );
    let run = lab(flavour).run(&body);

    let start = number(&run.line("POOL_START"), "POOL_START");
    let held = number(&run.line("POOL_HELD"), "POOL_HELD");
    let state = run.line("HOLDING");
    let holding = number(&state[..1], "HOLDING");
    let exited = number(&state[2..], "EXITED");
    assert_eq!(
        holding + exited,
        processes,
        "not every process held its buffers or exited within 60 s: {state:?}"
    );
    let procs = run.lines("PROC");
    let errs = run.lines("PROCERR");
    assert_eq!(procs.len(), processes as usize);
    let (mut passed, mut refused) = (0u64, 0u64);
    let mut free_reported = Vec::new();
    for (p, e) in procs.iter().zip(&errs) {
        let json = json_after(&p[2..].join(" "));
        match p[1] {
            "0" => {
                assert_eq!(json["buffers"], buffers, "{json}");
                assert_eq!(
                    json["intact"],
                    serde_json::json!(vec![true; buffers]),
                    "a holder's buffers lost their pattern while others exhausted the pool: {json}"
                );
                passed += 1;
            }
            "1" => {
                let error = &json["error"];
                assert_eq!(error["kind"], "failure", "{json}");
                assert_eq!(error["exit_code"], 1, "{json}");
                let message = error["message"].as_str().unwrap();
                let stderr = e[1..].join(" ");
                for text in [message, stderr.as_str()] {
                    assert!(
                        text.contains(&format!("p2pmem pool of {}", run_provider(&run)))
                            && text.contains("cannot supply 1048576 contiguous bytes")
                            && text.contains("bytes free"),
                        "the refusal must name the provider, the request and the free bytes: {text}"
                    );
                }
                // "(N bytes free, possibly fragmented)"
                let free: u64 = message
                    .split(" bytes free")
                    .next()
                    .and_then(|m| m.rsplit('(').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no free byte count in {message}"));
                assert!(
                    free < start,
                    "{free} bytes free reported of a {start}-byte pool"
                );
                free_reported.push(free);
                refused += 1;
            }
            rc => panic!("process {} ended with status {rc}: {p:?} {e:?}", p[0]),
        }
    }
    assert_eq!(
        passed, holding,
        "every process that held its buffers passed"
    );
    assert!(
        refused > 0,
        "32 MiB asked of a 16 MiB pool, and nobody was refused"
    );
    assert!(
        passed >= 1 && passed * (buffers as u64) * MIB <= start,
        "{passed} processes held {buffers} MiB each of a {start}-byte pool"
    );
    assert_eq!(
        held,
        start - passed * buffers as u64 * MIB,
        "while the holders held and the refused had exited, the pool must be short by exactly the holders' buffers"
    );
    assert_eq!(
        number(&run.line("POOL_END"), "POOL_END"),
        start,
        "the pool did not come back whole after every process exited"
    );
    run.assert_kernel_log_clean();
    eprintln!(
        "FIGURE pool-exhaustion flavour={} processes={processes} held={passed} refused={refused} \
         free_reported={free_reported:?} pool_start={start} pool_while_held={held}",
        run.flavour().name(),
    );
}

/// Eight verified copies at once, through all three providers' CMBs, in both directions,
/// each from its own range of random data to its own destination partition (`copy` opens
/// a destination block device exclusively, so eight copies need eight of them): every
/// copy succeeds and verifies, an independent md5 in the guest agrees for every
/// destination range, the rest of each destination partition stays zero, and every pool
/// is whole afterwards.
fn eight_concurrent_verified_copies_across_providers_all_land(flavour: Flavour) {
    let copies = 8;
    let length = 8 * MIB;
    // (first sector, sectors) of 512 bytes: 1 MiB aligned, within 256 and 64 MiB disks.
    let mbr_big = mbr_printf(&[
        (2048, 131072),
        (133120, 32768),
        (165888, 32768),
        (198656, 32768),
    ]);
    let mbr_small = mbr_printf(&[(2048, 8192), (10240, 32768), (43008, 32768)]);
    let body = format!(
        r#"S=$(ns chk-src); D=$(ns chk-dst); X=$(ns chk-prov)
PROVS="$(bdf chk-src) $(bdf chk-dst) $(bdf chk-prov)"
for p in $PROVS; do echo "POOL_START $p $(available $p)"; done
# Partition 1 of chk-src and chk-dst: 64 MiB of random source data; partitions 2-4 of
# those and 2-3 of chk-prov (16 MiB each, still zero): destinations.
{mbr_big} | dd of=$S bs=1 seek=446 conv=notrunc 2>/dev/null
{mbr_big} | dd of=$D bs=1 seek=446 conv=notrunc 2>/dev/null
{mbr_small} | dd of=$X bs=1 seek=446 conv=notrunc 2>/dev/null
sync
for disk in $S $D $X; do blockdev --rereadpt $disk; done
n=0; while [ ! -b ${{X}}p3 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
echo "PARTITIONS $(ls /dev | grep -c 'nvme.n1p')"
fill ${{S}}p1 $((64 * 1048576)); fill ${{D}}p1 $((64 * 1048576))
# copy i: source partition, destination partition, provider. Each provider is the third
# controller, never the copy's own source or destination (see RELIABILITY.md: a
# controller's own CMB as the buffer failed under this load in QEMU).
PS=$(bdf chk-src); PD=$(bdf chk-dst); PX=$(bdf chk-prov)
set -- \
  ${{S}}p1 ${{D}}p2 $PX  ${{D}}p1 ${{S}}p2 $PX  ${{S}}p1 ${{D}}p3 $PX  ${{D}}p1 ${{S}}p3 $PX \
  ${{S}}p1 ${{X}}p2 $PD  ${{D}}p1 ${{X}}p3 $PS  ${{S}}p1 ${{D}}p4 $PX  ${{D}}p1 ${{S}}p4 $PX
i=0
while [ $i -lt {copies} ]; do
  from=$1; to=$2; p=$3; shift 3
  so=$((i * {length}))
  echo "$from $to $so" > /tmp/c.$i.args
  ( p2pdma copy $from $to --provider $p --src-offset $so --length {length} \
      --chunk-size 256k --queue-depth 4 --verify --json > /tmp/c.$i.json 2> /tmp/c.$i.err
    echo $? > /tmp/c.$i.rc ) &
  i=$((i+1))
done
t0=$(now)
wait
echo "ALL_DONE_S $(since $t0)"
zero=$(dd if=/dev/zero bs={length} count=1 2>/dev/null | md5sum | cut -d' ' -f1)
i=0
while [ $i -lt {copies} ]; do
  set -- $(cat /tmp/c.$i.args)
  echo "COPY $i $(cat /tmp/c.$i.rc) $(md5 $1 $3 {length}) $(md5 $2 0 {length}) $(one_line /tmp/c.$i.json)"
  echo "COPYERR $i $(one_line /tmp/c.$i.err)"
  echo "REST $i $(md5 $2 {length} {length}) $zero"
  i=$((i+1))
done
for p in $PROVS; do echo "POOL_END $p $(available $p)"; done
"#
    );
    let run = lab(flavour).run(&body);

    assert_eq!(
        run.line("PARTITIONS"),
        ["11"],
        "partitioning the three disks failed"
    );
    let lines = run.lines("COPY");
    let errs = run.lines("COPYERR");
    assert_eq!(lines.len(), copies, "not every copy reported");
    let mut providers = std::collections::BTreeSet::new();
    let mut seconds = Vec::new();
    for (c, e) in lines.iter().zip(&errs) {
        let i = c[0];
        assert_eq!(c[1], "0", "copy {i} failed: {c:?} {e:?}");
        let (src_md5, dst_md5) = (c[2], c[3]);
        assert_eq!(
            src_md5, dst_md5,
            "copy {i}: the guest's md5 of the destination range differs from the source's"
        );
        let summary = json_after(&c[4..].join(" "));
        assert_eq!(summary["verified"], true, "copy {i}: {summary}");
        assert_eq!(
            summary["bytes"].as_u64(),
            Some(length),
            "copy {i}: {summary}"
        );
        assert_eq!(
            summary["mode"], "p2p",
            "copy {i} did not go peer to peer: {summary}"
        );
        providers.insert(summary["provider"].as_str().unwrap().to_owned());
        seconds.push(summary["seconds"].as_f64().unwrap());
    }
    let md5s: std::collections::BTreeSet<&str> = lines.iter().map(|c| c[2]).collect();
    assert_eq!(
        md5s.len(),
        copies,
        "the copies' source ranges must all differ (random data)"
    );
    assert_eq!(
        providers.len(),
        3,
        "the copies must use all three providers: {providers:?}"
    );
    for rest in run.lines("REST") {
        assert_eq!(
            rest[1], rest[2],
            "copy {}: its destination partition changed beyond the copied range",
            rest[0]
        );
    }
    let start = run.lines("POOL_START");
    let end = run.lines("POOL_END");
    assert_eq!(start.len(), 3);
    assert_eq!(start, end, "a pool did not come back whole");
    run.assert_kernel_log_clean();
    seconds.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE eight-concurrent-copies flavour={} copies={copies} bytes_each={length} all_done_s={} copy_s min={} max={}",
        run.flavour().name(),
        run.line("ALL_DONE_S")[0],
        seconds[0],
        seconds[copies - 1],
    );
}

/// The seed thread's own race, hammered: threads doing 4 KiB O_DIRECT reads into one
/// provider's p2pmem in a tight loop (each read pins the buffer through GUP-fast, the
/// path the thread worries about) while the provider is unbound and rebound again and
/// again. Every read either completes with the source's bytes (random data, checked
/// per read) or meets the revocation (the library's `Revoked`, EFAULT from a zapped
/// mapping); every unbind returns; no kernel report; the pool is whole at the end.
fn o_direct_reads_racing_repeated_unbinds_hold_the_right_data(flavour: Flavour) {
    let cycles = 24;
    let threads = 4;
    let body = format!(
        r#"S=$(ns chk-src); P=$(bdf chk-prov)
echo "POOL_START $(available $P)"
fill $S 4194304
rm -f /tmp/stop /tmp/ready
p2pdma lab guest read-loop $P $S --threads {threads} --size 4k --span 4M --stop-file /tmp/stop --ready-file /tmp/ready > /tmp/rl.json 2> /tmp/rl.err &
loop=$!
n=0; while [ ! -e /tmp/ready ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
echo "READY $(cat /tmp/ready 2>/dev/null || echo never)"
t0=$(now)
r=1
while [ $r -le {cycles} ]; do
  timed_unbind UNBIND $P
  rebind chk-prov $P
  sleep 0.3
  r=$((r+1))
done
echo "CYCLES_S $(since $t0)"
sleep 1
touch /tmp/stop
wait $loop; echo "LOOP_RC $?"
echo "LOOP_JSON $(one_line /tmp/rl.json)"
echo "LOOP_ERR $(one_line /tmp/rl.err)"
echo "POOL_END $(available $P)"
"#
    );
    let run = lab(flavour).args(&["--timeout", "900"]).run(&body);

    assert_eq!(
        run.line("READY"),
        ["ready"],
        "the readers never all completed a verified read"
    );
    let unbinds = run.lines("UNBIND");
    assert_eq!(unbinds.len(), cycles, "not every cycle ran");
    let mut times = Vec::new();
    for u in &unbinds {
        assert_ne!(u[0], "hung", "an unbind did not return within 60 s");
        assert_eq!(u[0], "0", "an unbind failed: {u:?}");
        times.push(u[1].parse::<f64>().unwrap());
    }
    let report = json_after(&run.line("LOOP_JSON").join(" "));
    let count = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    assert_eq!(
        count("reads_mismatched"),
        0,
        "a completed read held wrong data: {report}"
    );
    assert_eq!(count("reads_short"), 0, "{report}");
    assert_eq!(count("unexpected_count"), 0, "unexpected errors: {report}");
    assert_eq!(run.line("LOOP_RC"), ["0"], "{report}");
    let lost = count("reads_revoked") + count("checks_revoked");
    assert!(
        lost > 0,
        "no read met a revoked buffer: the unbinds did not race the reads: {report}"
    );
    assert!(
        count("allocations") > threads,
        "no thread allocated again after losing its buffer: {report}"
    );
    assert!(count("reads_verified") > 0, "{report}");
    let start = number(&run.line("POOL_START"), "POOL_START");
    assert_eq!(
        number(&run.line("POOL_END"), "POOL_END"),
        start,
        "the pool did not come back whole"
    );
    run.assert_kernel_log_clean();
    times.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE reads-racing-unbinds flavour={} unbinds={cycles} threads={threads} cycles_s={} \
         reads_started={} verified={} revoked_at_read={} revoked_before_check={} allocations={} \
         alloc_provider_gone={} alloc_pool_empty={} unbind_s min={} median={} max={}",
        run.flavour().name(),
        run.line("CYCLES_S")[0],
        count("reads_started"),
        count("reads_verified"),
        count("reads_revoked"),
        count("checks_revoked"),
        count("allocations"),
        count("allocations_provider_gone"),
        count("allocations_pool_empty"),
        times[0],
        times[cycles / 2],
        times[cycles - 1],
    );
}

/// A `printf` command printing the last 66 bytes of an MBR (bytes 446..512): primary
/// partitions of type 0x83 at these (first sector, sectors), and the boot signature.
fn mbr_printf(partitions: &[(u32, u32)]) -> String {
    let mut bytes = Vec::new();
    for slot in 0..4 {
        let mut entry = [0u8; 16];
        if let Some(&(start, sectors)) = partitions.get(slot) {
            entry[4] = 0x83;
            entry[8..12].copy_from_slice(&start.to_le_bytes());
            entry[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        bytes.extend_from_slice(&entry);
    }
    bytes.extend_from_slice(&[0x55, 0xaa]);
    let escaped: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
    format!("printf '{escaped}'")
}

/// The BDF `bdf chk-prov` printed, from the `PROVIDER` line every scenario script that
/// needs it prints.
fn run_provider(run: &LabRun) -> String {
    run.line("PROVIDER")[0].to_owned()
}

on_both_kernels! {
    unbinding_the_provider_while_a_copy_is_in_flight_returns_and_loses_nothing,
    hot_removing_the_provider_while_a_copy_is_in_flight_loses_nothing,
    hot_removing_the_destination_while_a_copy_is_in_flight_loses_nothing,
    killing_a_process_with_io_in_flight_then_unbinding_returns_every_byte_to_the_pool,
    twenty_map_unbind_rebind_cycles_leak_nothing,
    mapping_while_the_provider_is_unbound_fails_cleanly_or_is_revoked,
    many_processes_exhausting_one_pool_fail_clearly_and_leak_nothing,
    eight_concurrent_verified_copies_across_providers_all_land,
    o_direct_reads_racing_repeated_unbinds_hold_the_right_data,
}

#[test]
fn kernel_log_check_catches_bug_reports_and_passes_a_clean_boot() {
    let clean = "[    1.129200] nvme 0000:06:00.0: added peer-to-peer DMA memory 0xfb000000-0xfbffffff\n\
                 [    0.000000] Command line: console=ttyS0 panic=-1 oops=panic loglevel=7\n\
                 [    1.006015] rcu: \tRCU lockdep checking is enabled.\n\
                 [   12.416261] pcieport 0000:02:01.0: pciehp: Slot(3): Button press: will power off in 5 sec\n";
    assert_eq!(kernel_log_problems(clean), Vec::<String>::new());
    for bad in [
        "[   3.1] BUG: KASAN: slab-use-after-free in p2pdma_page_free+0x1c/0x40",
        "[   3.1] WARNING: CPU: 1 PID: 77 at mm/memremap.c:499 free_zone_device_folio+0x8/0x10",
        "[   3.1] WARNING: possible circular locking dependency detected",
        "[ 123.4] INFO: task sh:88 blocked for more than 20 seconds.",
        "[   3.1] Oops: general protection fault, probably for non-canonical address",
        "[   3.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:80]",
    ] {
        let log = format!("{clean}{bad}\n");
        assert_eq!(kernel_log_problems(&log), vec![bad.to_owned()]);
    }
}

#[test]
fn mbr_tail_has_the_entries_and_the_boot_signature() {
    let cmd = mbr_printf(&[(2048, 131072)]);
    let body = cmd
        .strip_prefix("printf '")
        .and_then(|c| c.strip_suffix('\''))
        .unwrap();
    let bytes: Vec<u8> = body
        .split('\\')
        .skip(1)
        .map(|o| u8::from_str_radix(o, 8).unwrap())
        .collect();
    assert_eq!(bytes.len(), 66);
    assert_eq!(bytes[4], 0x83);
    assert_eq!(bytes[8..12], 2048u32.to_le_bytes());
    assert_eq!(bytes[12..16], 131072u32.to_le_bytes());
    assert!(
        bytes[16..64].iter().all(|&b| b == 0),
        "unused entries are empty"
    );
    assert_eq!(bytes[64..], [0x55, 0xaa]);
}

/// The pciehp lock-order report lockdep prints on hot removal (RELIABILITY.md), shortened.
const PCIEHP_LOCKDEP_REPORT: &str = "\
[   38.034751] ======================================================
[   38.034892] WARNING: possible circular locking dependency detected
[   38.035352] irq/27-pciehp/37 is trying to acquire lock:
[   38.035452] ffff88800343fb00 (&ctrl->reset_lock/1){.+.+}-{3:3}, at: pciehp_unconfigure_device+0x185/0x213
[   38.040229] ffffffff8227c948 (pci_rescan_remove_lock){+.+.}-{3:3}, at: pciehp_unconfigure_device+0xd7/0x213
[   38.042505]        pciehp_ist+0x261/0x2e5
[   38.048037] Call Trace:
[   38.050253]  pciehp_unconfigure_device+0x185/0x213
[   38.050564]  </TASK>
";

#[test]
fn kernel_log_check_sets_aside_only_the_known_pciehp_report() {
    let after =
        "[   41.9] WARNING: CPU: 0 PID: 1 at drivers/pci/p2pdma.c:200 p2pdma_page_free+0x10/0x20\n";
    let log = format!("{PCIEHP_LOCKDEP_REPORT}{after}");
    assert_eq!(
        kernel_log_problems(&log),
        vec![after.trim_end().to_owned()],
        "the known report is set aside, what follows it is not"
    );
    let other_locks = PCIEHP_LOCKDEP_REPORT.replace("pci_rescan_remove_lock", "p2pdma_lock");
    assert!(
        kernel_log_problems(&other_locks)
            .iter()
            .any(|l| l.contains("possible circular locking")),
        "a circular-locking report about other locks must count"
    );
    let truncated = PCIEHP_LOCKDEP_REPORT.replace("</TASK>", "");
    assert!(
        !kernel_log_problems(&truncated).is_empty(),
        "a report cut short (the guest died mid-report) must count"
    );
}
