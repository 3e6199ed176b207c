//! The verified copy `lab check` makes in each topology's boot: 8 MiB of random bytes
//! from the first NVMe namespace to the second (`p2pdma copy --verify --bounce auto`:
//! P2P where the rules allow it, through host memory where they do not), checked again
//! in the guest with md5sum over both ranges.

use serde::{Deserialize, Serialize};

/// The guest side; run after the conformance probes (it overwrites the first 8 MiB of
/// the first namespace and of the second).
pub const GUEST_SCRIPT: &str = r#"
set -- $(ls /sys/block | grep '^nvme[0-9]*n[0-9]*$' | sort)
if [ $# -ge 2 ]; then
  A=/dev/$1; B=/dev/$2
  dd if=/dev/urandom of=$A bs=1M count=8 oflag=direct 2>/dev/null
  p2pdma copy $A $B --length 8M --verify --bounce auto --json > /tmp/copy.json 2>/tmp/copy.err; rc=$?
  ma=$(dd if=$A bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  mb=$(dd if=$B bs=1M count=8 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
  mode=$(sed -n 's/.*"mode":"\([a-z0-9_]*\)".*/\1/p' /tmp/copy.json | head -1)
  echo "COPY $rc $A $B $ma $mb ${mode:-none}"
  echo "COPY_ERR $(tr '\n' ' ' < /tmp/copy.err)"
else
  echo "COPY none"
fi
"#;

/// The verified copy's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyResult {
    /// Source and destination (`/dev/nvme0n1 -> /dev/nvme1n1`).
    pub what: String,
    /// `p2p` or `bounce`, as the copy reported it.
    pub mode: String,
    /// Whether the copy succeeded and both ranges hold the same bytes.
    pub verified: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// The copy went P2P, the kernel allowed it, and its verification found the data
    /// missing in a topology with QEMU's emulated IOMMU, which drops P2P DMA the kernel
    /// allows (conformance accepts the same loss there): QEMU's limit, not the kernel's
    /// failure, so the boot still passes. Never set outside an emulated IOMMU.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost_behind_emulated_iommu: bool,
}

/// Judges the `COPY` lines; `None` when the topology has fewer than two namespaces.
/// `emulated_iommu`: the topology has QEMU's IOMMU (see
/// [`CopyResult::lost_behind_emulated_iommu`]).
pub fn judge(stdout: &str, emulated_iommu: bool) -> Option<CopyResult> {
    let line = stdout.lines().find_map(|l| l.trim().strip_prefix("COPY "));
    let Some(line) = line else {
        return Some(CopyResult {
            what: String::new(),
            mode: String::new(),
            verified: false,
            error: Some("the guest printed no copy result (the script stopped early)".into()),
            lost_behind_emulated_iommu: false,
        });
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f == ["none"] {
        return None;
    }
    let [rc, a, b, ma, mb, mode] = f[..] else {
        return Some(CopyResult {
            what: String::new(),
            mode: String::new(),
            verified: false,
            error: Some(format!("unreadable copy result: {line}")),
            lost_behind_emulated_iommu: false,
        });
    };
    let stderr = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("COPY_ERR"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let error = if rc != "0" {
        Some(format!("p2pdma copy exited {rc}: {stderr}"))
    } else if ma != mb {
        Some(
            "the copy said it succeeded but the destination's md5 differs from the source's".into(),
        )
    } else {
        None
    };
    Some(CopyResult {
        what: format!("{a} -> {b}"),
        mode: mode.to_owned(),
        verified: error.is_none(),
        lost_behind_emulated_iommu: emulated_iommu
            && mode == "p2p"
            && rc == p2pdma::report::error::VERIFY_MISMATCH.to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_verified_only_when_it_succeeded_and_the_digests_match() {
        let ok = judge(
            "COPY 0 /dev/nvme0n1 /dev/nvme1n1 ab12 ab12 p2p\nCOPY_ERR \n",
            false,
        )
        .unwrap();
        assert!(ok.verified);
        assert_eq!(
            (ok.what.as_str(), ok.mode.as_str()),
            ("/dev/nvme0n1 -> /dev/nvme1n1", "p2p")
        );
        let differs = judge("COPY 0 /dev/nvme0n1 /dev/nvme1n1 ab12 ab13 p2p\n", false).unwrap();
        assert!(!differs.verified);
        let failed = judge(
            "COPY 5 /dev/nvme0n1 /dev/nvme1n1 ab12 ab13 none\nCOPY_ERR p2pdma: verify: mismatch \n",
            false,
        )
        .unwrap();
        assert_eq!(
            failed.error.as_deref(),
            Some("p2pdma copy exited 5: p2pdma: verify: mismatch")
        );
        assert!(judge("COPY none\n", false).is_none());
        assert!(!judge("", false).unwrap().verified);
    }

    #[test]
    fn p2p_data_lost_is_excused_only_behind_an_emulated_iommu_and_only_as_a_mismatch() {
        let lost = "COPY 5 /dev/nvme0n1 /dev/nvme1n1 ab12 ab13 p2p\nCOPY_ERR mismatch\n";
        let behind = judge(lost, true).unwrap();
        assert!(!behind.verified && behind.lost_behind_emulated_iommu);
        assert!(!judge(lost, false).unwrap().lost_behind_emulated_iommu);
        let bounced = "COPY 5 /dev/nvme0n1 /dev/nvme1n1 ab12 ab13 bounce\n";
        assert!(!judge(bounced, true).unwrap().lost_behind_emulated_iommu);
        let other_error = "COPY 1 /dev/nvme0n1 /dev/nvme1n1 ab12 ab13 p2p\n";
        assert!(!judge(other_error, true).unwrap().lost_behind_emulated_iommu);
    }
}
