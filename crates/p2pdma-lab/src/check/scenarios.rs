//! The teardown scenarios `lab check` runs: the core two of the seed thread's races
//! (RELIABILITY.md), in one boot of a three-controller switch topology:
//!
//! - `unbind-provider-mid-copy`: the provider whose CMB carries a copy is unbound while
//!   the copy's I/O is in flight. The unbind must return (60 s deadline), the copy must
//!   stop with `provider_gone`, the prefix it reports as written must be the source's
//!   bytes, and after a rebind the pool's `available` must be back to its value at boot.
//! - `hot-remove-provider-mid-copy`: the same provider is hot-removed from the host (QMP
//!   `device_del`) mid-copy. It must be gone within 60 s, the copy must stop with
//!   `provider_gone`, and the prefix it reports must be the source's bytes.
//!
//! The guest prints one `KEY value...` line per fact; [`judge`] decides on the host. The
//! kernel log of the boot is scanned like every other (a hung task or a KASAN report
//! fails the check there).

use serde::{Deserialize, Serialize};

/// The topology the scenarios boot (one switch, three controllers: `chk-src` and `chk-dst`
/// with disks, and `chk-prov`, whose CMB carries the copy). The reliability lab suite
/// (RELIABILITY.md) boots it too.
pub const TOPOLOGY: &str = r#"
[check-teardown]
description = "source, destination and a third controller whose CMB carries the copy, behind one switch"
bridge = [
  { id = "rp1", kind = "root-port", parent = "pcie.0", addr = "1", speed = "8", width = 4 },
  { id = "up1", kind = "switch-upstream", parent = "rp1" },
  { id = "dn1", kind = "switch-downstream", parent = "up1" },
  { id = "dn2", kind = "switch-downstream", parent = "up1" },
  { id = "dn3", kind = "switch-downstream", parent = "up1" },
]
nvme = [
  { id = "nvme-src", serial = "chk-src", parent = "dn1", cmb_mib = 16, disk_mib = 256 },
  { id = "nvme-dst", serial = "chk-dst", parent = "dn2", cmb_mib = 16, disk_mib = 256 },
  { id = "nvme-prov", serial = "chk-prov", parent = "dn3", cmb_mib = 16 },
]
"#;

/// The topology's name in [`TOPOLOGY`].
pub const TOPOLOGY_NAME: &str = "check-teardown";

/// The QMP fault the hot-removal scenario needs (`--fault` syntax).
pub const FAULT: &str = "device_del:nvme-prov@signal:remove";

/// The guest script: both scenarios, one after the other.
pub const GUEST_SCRIPT: &str = r#"
ns() { p2pdma lab guest nvme "$1" | awk '{print $3}'; }
bdf() { p2pdma lab guest nvme "$1" | awk '{print $1}'; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
md5() { dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) 2>/dev/null | md5sum | cut -d' ' -f1; }
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" | head -1; }
available() { cat /sys/bus/pci/devices/$1/p2pmem/available 2>/dev/null || echo none; }
sectors_written() { awk '{print $7}' /sys/block/${1#/dev/}/stat; }
wait_progress() {
  local n=0
  while [ $(( $(sectors_written $1) - $2 )) -lt 8192 ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done
}
rebind() {
  echo "$2" > /sys/bus/pci/drivers/nvme/bind
  local n=0
  while [ -z "$(p2pdma lab guest nvme $1 2>/dev/null | awk '{print $3}')" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
}
[ -w /proc/sys/kernel/hung_task_timeout_secs ] && echo 20 > /proc/sys/kernel/hung_task_timeout_secs
S=$(ns chk-src); D=$(ns chk-dst); P=$(bdf chk-prov)
LEN=$((128 * 1048576))
dd if=/dev/urandom of=$S bs=1M count=128 oflag=direct 2>/dev/null
echo "POOL_START $(available $P)"
# unbind-provider-mid-copy
w0=$(sectors_written $D)
p2pdma copy $S $D --provider $P --length $LEN --chunk-size 1M --queue-depth 4 --json > /tmp/u.json 2>/tmp/u.err &
pid=$!
wait_progress $D $w0
rm -f /tmp/unbind.done
( t0=$(now); echo "$P" > /sys/bus/pci/devices/$P/driver/unbind; rc=$?; echo "$rc $(since $t0)" > /tmp/unbind.tmp; mv /tmp/unbind.tmp /tmp/unbind.done ) &
n=0; while [ ! -e /tmp/unbind.done ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done
if [ -e /tmp/unbind.done ]; then echo "UNBIND $(cat /tmp/unbind.done)"; else echo "UNBIND hung"; fi
wait $pid; echo "UNBIND_COPY_RC $?"
echo "UNBIND_COPY_KIND $(field failure_kind /tmp/u.json)"
END=$(field contiguous_end /tmp/u.json); echo "UNBIND_WRITTEN ${END:-0}"
[ -n "$END" ] && [ "$END" -gt 0 ] && echo "UNBIND_PREFIX $(md5 $S 0 $END) $(md5 $D 0 $END)"
rebind chk-prov $P
echo "POOL_REBOUND $(available $P)"
# hot-remove-provider-mid-copy (4 KiB chunks outlast pciehp's 5 s button delay)
LEN=$((256 * 1048576))
dd if=/dev/urandom of=$S bs=1M count=256 oflag=direct 2>/dev/null
w0=$(sectors_written $D)
p2pdma copy $S $D --provider $P --length $LEN --chunk-size 4k --queue-depth 4 --json > /tmp/r.json 2>/tmp/r.err &
pid=$!
wait_progress $D $w0
p2pdma lab guest signal remove
t0=$(now); n=0
while [ -e /sys/bus/pci/devices/$P ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
if [ -e /sys/bus/pci/devices/$P ]; then echo "GONE hung"; else echo "GONE $(since $t0)"; fi
wait $pid; echo "REMOVE_COPY_RC $?"
echo "REMOVE_COPY_KIND $(field failure_kind /tmp/r.json)"
END=$(field contiguous_end /tmp/r.json); echo "REMOVE_WRITTEN ${END:-0}"
[ -n "$END" ] && [ "$END" -gt 0 ] && echo "REMOVE_PREFIX $(md5 $S 0 $END) $(md5 $D 0 $END)"
true
"#;

/// One scenario's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: String,
    /// Whether every check held.
    pub passed: bool,
    /// What was seen (times, bytes), or what failed.
    pub detail: String,
}

fn fields<'a>(stdout: &'a str, key: &str) -> Option<Vec<&'a str>> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(' '))
        .map(|rest| rest.split_whitespace().collect())
        .or_else(|| {
            // A key with an empty value ("KEY" alone).
            stdout.lines().any(|l| l.trim() == key).then(Vec::new)
        })
}

/// Checks that make up one scenario; the first failure is the detail.
struct Checks {
    failures: Vec<String>,
    seen: Vec<String>,
}

impl Checks {
    fn new() -> Checks {
        Checks {
            failures: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn require(&mut self, ok: bool, failure: impl Into<String>) {
        if !ok {
            self.failures.push(failure.into());
        }
    }

    fn result(self, name: &str) -> ScenarioResult {
        let passed = self.failures.is_empty();
        ScenarioResult {
            name: name.to_owned(),
            passed,
            detail: if passed {
                self.seen.join("; ")
            } else {
                self.failures.join("; ")
            },
        }
    }
}

/// Checks a copy stopped by the teardown: failed, `provider_gone`, and the reported
/// prefix holds the source's bytes.
fn stopped_copy(stdout: &str, prefix: &str, checks: &mut Checks) {
    let rc = fields(stdout, &format!("{prefix}_COPY_RC"));
    let kind = fields(stdout, &format!("{prefix}_COPY_KIND"));
    let written: u64 = fields(stdout, &format!("{prefix}_WRITTEN"))
        .and_then(|f| f.first().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    match rc.as_deref() {
        Some(["0"]) => checks.require(
            false,
            "the copy completed: the teardown came too late to test anything",
        ),
        Some([_]) => {}
        _ => checks.require(
            false,
            "the guest printed no copy status (the script stopped early)",
        ),
    }
    checks.require(
        kind.as_deref() == Some(&["provider_gone"][..]),
        format!(
            "the copy's failure_kind is {:?}, not provider_gone",
            kind.map(|k| k.join(" ")).unwrap_or_default()
        ),
    );
    if written > 0 {
        let md5 = fields(stdout, &format!("{prefix}_PREFIX")).unwrap_or_default();
        checks.require(
            md5.len() == 2 && md5[0] == md5[1],
            format!(
                "the {written} bytes the copy reported as written are not the source's ({md5:?})"
            ),
        );
        checks
            .seen
            .push(format!("{} MiB written before it, verified", written >> 20));
    } else {
        checks.seen.push("nothing written before it".to_owned());
    }
}

/// Judges the output of [`GUEST_SCRIPT`].
pub fn judge(stdout: &str) -> Vec<ScenarioResult> {
    let mut unbind = Checks::new();
    match fields(stdout, "UNBIND").as_deref() {
        Some(["hung"]) => unbind.require(false, "the unbind did not return within 60 s"),
        Some(["0", secs]) => unbind.seen.push(format!("unbind returned in {secs} s")),
        Some(other) => unbind.require(
            false,
            format!("writing to the driver's unbind failed: {other:?}"),
        ),
        None => unbind.require(
            false,
            "the guest printed no unbind result (the script stopped early)",
        ),
    }
    stopped_copy(stdout, "UNBIND", &mut unbind);
    let start = fields(stdout, "POOL_START").unwrap_or_default();
    let rebound = fields(stdout, "POOL_REBOUND").unwrap_or_default();
    unbind.require(
        !start.is_empty() && start != ["none"] && start == rebound,
        format!("the pool's available was {start:?} at boot and {rebound:?} after the rebind"),
    );
    if start == rebound {
        unbind
            .seen
            .push("pool back to its size after rebind".into());
    }

    let mut remove = Checks::new();
    match fields(stdout, "GONE").as_deref() {
        Some(["hung"]) => remove.require(
            false,
            "the provider was still there 60 s after the removal began",
        ),
        Some([secs]) => remove.seen.push(format!("removed in {secs} s")),
        _ => remove.require(
            false,
            "the guest printed no removal result (the script stopped early)",
        ),
    }
    stopped_copy(stdout, "REMOVE", &mut remove);
    vec![
        unbind.result("unbind-provider-mid-copy"),
        remove.result("hot-remove-provider-mid-copy"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "POOL_START 16777216\nUNBIND 0 0.04\nUNBIND_COPY_RC 4\n\
        UNBIND_COPY_KIND provider_gone\nUNBIND_WRITTEN 8388608\nUNBIND_PREFIX aa aa\n\
        POOL_REBOUND 16777216\nGONE 5.21\nREMOVE_COPY_RC 4\nREMOVE_COPY_KIND provider_gone\n\
        REMOVE_WRITTEN 4194304\nREMOVE_PREFIX bb bb\n";

    #[test]
    fn both_scenarios_pass_on_the_expected_output() {
        let r = judge(PASSING);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|s| s.passed), "{r:?}");
        assert_eq!(
            r[0].detail,
            "unbind returned in 0.04 s; 8 MiB written before it, verified; pool back to its size after rebind"
        );
    }

    #[test]
    fn a_hang_a_wrong_prefix_or_a_leak_fails_and_says_so() {
        let hung = PASSING.replace("GONE 5.21", "GONE hung");
        let r = judge(&hung);
        assert!(r[0].passed && !r[1].passed);
        assert!(
            r[1].detail.contains("still there 60 s after"),
            "{}",
            r[1].detail
        );

        let corrupt = PASSING.replace("UNBIND_PREFIX aa aa", "UNBIND_PREFIX aa ab");
        assert!(judge(&corrupt)[0].detail.contains("are not the source's"));

        let leak = PASSING.replace("POOL_REBOUND 16777216", "POOL_REBOUND 15728640");
        assert!(!judge(&leak)[0].passed);

        let completed = PASSING.replace("REMOVE_COPY_RC 4", "REMOVE_COPY_RC 0");
        assert!(judge(&completed)[1].detail.contains("too late"));
    }

    #[test]
    fn no_output_fails_both() {
        assert!(judge("").iter().all(|s| !s.passed));
    }
}
