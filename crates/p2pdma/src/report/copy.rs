//! What `p2pdma copy` shows: the plan of a dry run ([`dry_run_text`], [`DryRun`]), a
//! finished copy's [`Summary`] and its line ([`summary_text`]), a verification mismatch
//! ([`mismatch_text`]), and the error document of a copy the engine stopped
//! ([`failure_summary`]: its kind, hence the exit status, and the destination ranges it
//! wrote). [`crate::copy::job`] decides and runs the copy; this renders what it decided.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::Kind;
use crate::copy::endpoint::Inspected;
use crate::copy::job::{self, CopyOutcome, Prepared};
use crate::copy::plan::HumanBytes;
use crate::copy::route::{Mode, Route};
use crate::copy::{CopyPlan, Direction, EngineError, FailureKind, Verification};
use crate::topology::MapType;
use crate::Bdf;

/// One half of a copy run as a benchmark (`copy --only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Half {
    /// Only the source range was read.
    Read,
    /// Only the destination range was written.
    Write,
}

impl Half {
    /// The half `direction` runs, or `None` for a whole copy.
    pub fn of(direction: Direction) -> Option<Half> {
        match direction {
            Direction::Copy => None,
            Direction::ReadOnly => Some(Half::Read),
            Direction::WriteOnly => Some(Half::Write),
        }
    }
}

/// A finished copy as `copy --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The source as the user named it.
    pub src: PathBuf,
    /// The destination as the user named it.
    pub dst: PathBuf,
    /// First source byte.
    pub src_offset: u64,
    /// First destination byte.
    pub dst_offset: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time of the engine.
    pub seconds: f64,
    /// User + system CPU seconds of the process while the engine ran.
    pub cpu_seconds: f64,
    /// `bytes / seconds` (0 when no time passed).
    pub throughput_bytes_per_sec: f64,
    /// P2P or bounce.
    pub mode: Mode,
    /// The provider whose memory carried the data (P2P only).
    pub provider: Option<Bdf>,
    /// The functions the data crossed.
    pub path: Vec<String>,
    /// Why the copy went through host memory.
    pub bounce_reason: Option<String>,
    /// Bytes per chunk.
    pub chunk_size: u64,
    /// Chunks in flight.
    pub queue_depth: u32,
    /// Reads and writes that completed short and were resubmitted.
    pub short_transfers: u64,
    /// The half run, for `--only`.
    pub only: Option<Half>,
    /// With `verify`: whether both ranges matched.
    pub verified: Option<bool>,
    /// With `verify`: both digests and the first difference.
    pub verification: Option<Verification>,
    /// Wall time of `--verify` (re-reading and comparing both ranges).
    pub verify_seconds: Option<f64>,
}

impl Summary {
    /// The summary of a finished copy from `src` to `dst` (as the user named them) run
    /// in `direction` ([`crate::copy::job::CopyJob`]'s fields).
    pub fn new(src: &Path, dst: &Path, direction: Direction, outcome: &CopyOutcome) -> Summary {
        let (plan, route, report) = (
            &outcome.prepared.plan,
            &outcome.prepared.route,
            &outcome.report,
        );
        let verify_seconds = outcome.verification.map(|(_, t)| t.as_secs_f64());
        let verification = outcome.verification.map(|(v, _)| v);
        let seconds = report.elapsed.as_secs_f64();
        let throughput = if seconds > 0.0 {
            report.bytes as f64 / seconds
        } else {
            0.0
        };
        Summary {
            src: src.to_owned(),
            dst: dst.to_owned(),
            src_offset: plan.src_offset,
            dst_offset: plan.dst_offset,
            bytes: report.bytes,
            seconds,
            cpu_seconds: (report.cpu_user + report.cpu_system).as_secs_f64(),
            throughput_bytes_per_sec: throughput,
            mode: route.mode,
            provider: route.provider,
            path: route.path.clone(),
            bounce_reason: route.bounce_reason.clone(),
            chunk_size: plan.chunk_size,
            queue_depth: plan.queue_depth,
            short_transfers: report.short_transfers,
            only: Half::of(direction),
            verified: verification.map(|v| v.matched()),
            verification,
            verify_seconds,
        }
    }
}

/// The lines a finished copy prints without `--json`: what moved, how fast, by which
/// route; the digest when a verification matched.
pub fn summary_text(summary: &Summary, route: &Route) -> String {
    let bytes = HumanBytes(summary.bytes);
    let (src, dst) = (summary.src.display(), summary.dst.display());
    let what = match summary.only {
        None => format!("copied {bytes} from {src} to {dst}"),
        Some(Half::Read) => format!("read {bytes} from {src} (--only read)"),
        Some(Half::Write) => format!("wrote {bytes} to {dst} (--only write)"),
    };
    let mut out = format!(
        "{what} in {:.3} s ({}/s), {}\n",
        summary.seconds,
        HumanBytes(summary.throughput_bytes_per_sec as u64),
        match route.mode {
            Mode::P2p => format!("P2P through {}", job::provider_name(route)),
            Mode::Bounce => "through host memory".to_owned(),
        }
    );
    if let Some(v) = summary.verification.filter(Verification::matched) {
        let _ = writeln!(
            out,
            "verified: xxh3-128 {:032x} on both sides",
            v.src_digest
        );
    }
    out
}

/// The error line of a verification that found the ranges different: where, in both
/// files' own offsets, and both digests.
pub fn mismatch_text(summary: &Summary, v: &Verification) -> String {
    let at = v.first_difference.unwrap_or(0);
    format!(
        "verification failed: {} offset {} differs from {} offset {} (xxh3-128 {:032x} vs {:032x})",
        summary.dst.display(),
        summary.dst_offset + at,
        summary.src.display(),
        summary.src_offset + at,
        v.dst_digest,
        v.src_digest
    )
}

/// The note for a copy the kernel allowed although the topology verdict said it would
/// refuse (a wrong prediction worth a bug report), if that happened.
pub fn unexpected_p2p_note(route: &Route) -> Option<String> {
    (route.mode == Mode::P2p && route.p2p_expected == Some(false)).then(|| {
        format!(
            "the topology verdict predicted that the kernel would refuse P2P ({}), but it allowed it; please report this with `p2pdma snapshot`",
            route.why_not.as_deref().unwrap_or("no reason recorded")
        )
    })
}

/// What `copy --dry-run --json` prints.
#[derive(Debug, Serialize)]
pub struct DryRun<'a> {
    /// The source as inspected.
    pub src: &'a Inspected,
    /// The destination as inspected.
    pub dst: &'a Inspected,
    /// The validated plan.
    pub plan: CopyPlan,
    /// Chunks the copy takes.
    pub chunks: u64,
    /// Bytes of device (or host) memory the copy would allocate.
    pub buffer_bytes: u64,
    /// The route.
    pub route: &'a Route,
}

impl<'a> DryRun<'a> {
    /// The dry run of `prepared`.
    pub fn new(prepared: &'a Prepared) -> DryRun<'a> {
        DryRun {
            src: &prepared.src,
            dst: &prepared.dst,
            plan: prepared.plan,
            chunks: prepared.plan.chunk_count(),
            buffer_bytes: prepared.plan.chunk_size * prepared.buffers(),
            route: &prepared.route,
        }
    }
}

/// What `copy --dry-run` prints: the ranges, both endpoints, the route
/// ([`route_text`]), the chunking and the memory it takes; `src` and `dst` as the user
/// named them.
pub fn dry_run_text(src: &Path, dst: &Path, prepared: &Prepared) -> String {
    let Prepared {
        src: src_side,
        dst: dst_side,
        plan,
        route,
        sides,
        ..
    } = prepared;
    let buffer_bytes = plan.chunk_size * prepared.buffers();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan: copy {} ({} bytes) from {} [{}..{}) to {} [{}..{})",
        HumanBytes(plan.length),
        plan.length,
        src.display(),
        plan.src_offset,
        plan.src_offset + plan.length,
        dst.display(),
        plan.dst_offset,
        plan.dst_offset + plan.length
    );
    for ((label, side), pci) in [("source", src_side), ("destination", dst_side)]
        .iter()
        .zip(sides)
    {
        let _ = writeln!(
            out,
            "  {label:<12} {} ({}, {} bytes, O_DIRECT block {}; {})",
            side.facts.path.display(),
            side.facts.kind,
            side.facts.size,
            side.facts.block_size,
            match (pci.controller, &pci.not_p2p_because) {
                (Some(bdf), None) => format!("NVMe controller {bdf}"),
                (Some(bdf), Some(why)) => format!("on {bdf}, but no P2P: {why}"),
                (None, Some(why)) => format!("no P2P: {why}"),
                (None, None) => "not on a PCI device".to_owned(),
            }
        );
    }
    out.push_str(&route_text(route));
    let _ = writeln!(
        out,
        "  chunking     {} chunk(s) of {}, {} in flight: {} of {} memory",
        plan.chunk_count(),
        HumanBytes(plan.chunk_size),
        plan.queue_depth,
        HumanBytes(buffer_bytes),
        match route.mode {
            Mode::P2p => "device",
            Mode::Bounce => "host",
        }
    );
    if plan.grows_destination {
        out.push_str("  note         the destination file grows (--force)\n");
    }
    out.push_str("dry run: nothing was read or written\n");
    out
}

/// The route as the dry run shows it: mode, why bounce, provider and pool, each
/// verdict with its reasons, a refusal warning, the path, the root complex crossed,
/// and the bottleneck.
pub fn route_text(route: &Route) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  mode         {}", route.mode);
    if let Some(reason) = &route.bounce_reason {
        let _ = writeln!(out, "  why bounce   {reason}");
    }
    if let Some(bdf) = route.provider {
        let _ = writeln!(
            out,
            "  provider     {bdf}: {}",
            route.provider_reason.as_deref().unwrap_or("")
        );
        if let Some(pool) = route.pool {
            let _ = writeln!(
                out,
                "  pool         {} total, {} available, {}",
                HumanBytes(pool.size),
                HumanBytes(pool.available),
                if pool.published {
                    "published"
                } else {
                    "not published"
                }
            );
        }
    } else if let Some(note) = &route.provider_reason {
        let _ = writeln!(out, "  provider     {note}");
    }
    for v in &route.verdicts {
        let _ = writeln!(
            out,
            "  verdict      {} <-> {}: {}{}",
            v.provider,
            v.client,
            v.map_type,
            v.distance
                .map(|d| format!(", distance {d}"))
                .unwrap_or_default()
        );
        for r in &v.reasons {
            let _ = writeln!(out, "               - {r}");
        }
    }
    if let Some(why) = &route.why_not {
        if route.mode == Mode::P2p {
            let _ = writeln!(
                out,
                "  warning      the kernel is expected to refuse: {why}; the copy will fail (nothing written) unless run with --bounce auto"
            );
        }
    }
    let _ = writeln!(out, "  path         {}", route.path.join(" -> "));
    for v in &route.verdicts {
        if v.is_p2p() && v.map_type == MapType::ThruHostBridge {
            let _ = writeln!(
                out,
                "  via          the root complex between {} and {} ({})",
                v.provider,
                v.client,
                MapType::ThruHostBridge.kernel_name()
            );
        }
    }
    let bottleneck = match (&route.mode, &route.bottleneck) {
        (Mode::Bounce, _) => {
            "the slower device, plus both transfers crossing host memory".to_owned()
        }
        (Mode::P2p, Some(b)) => format!(
            "the slower of the two devices, at most {} (the link above {})",
            b.link, b.below
        ),
        (Mode::P2p, None) => "the slower of the two devices (link speeds unknown)".to_owned(),
    };
    let _ = writeln!(out, "  bottleneck   {bottleneck}");
    out
}

/// The details of the error object when the copy stops part-way: enough for a script to
/// know exactly which destination bytes changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureSummary {
    /// What the first failed request's errno means here.
    pub failure_kind: Option<FailureKind>,
    /// P2P or bounce.
    pub mode: Mode,
    /// The provider, for a P2P copy.
    pub provider: Option<Bdf>,
    /// Destination byte ranges whose writes completed, as [start, end) pairs.
    pub written: Vec<[u64; 2]>,
    /// Bytes written.
    pub bytes_written: u64,
    /// Everything from the copy's first destination byte up to here was written.
    pub contiguous_end: Option<u64>,
}

/// The kind of a stopped copy (partial when any destination byte was written, else
/// refused when the kernel refused P2P, else a failure) and what the error object says
/// about it.
pub fn failure_summary(err: &EngineError, route: &Route) -> (Kind, FailureSummary) {
    let written = match err {
        EngineError::Stopped { written, .. }
        | EngineError::RingFailed { written, .. }
        | EngineError::Stalled { written, .. } => Some(written),
        _ => None,
    };
    let failure_kind = match err {
        EngineError::Stopped { failure, .. } => Some(failure.kind),
        _ => None,
    };
    let bytes_written = written.map_or(0, |w| w.ranges.total());
    let kind = if bytes_written > 0 {
        Kind::PartialCopy
    } else if failure_kind == Some(FailureKind::P2pRefused) {
        Kind::P2pRefused
    } else {
        Kind::Failure
    };
    let summary = FailureSummary {
        failure_kind,
        mode: route.mode,
        provider: route.provider,
        written: written
            .map(|w| w.ranges.ranges().iter().map(|r| [r.start, r.end]).collect())
            .unwrap_or_default(),
        bytes_written,
        contiguous_end: written.map(|w| w.contiguous_end()),
    };
    (kind, summary)
}

#[cfg(test)]
mod tests {
    //! Snapshot tests of the dry run on the `switch` lab fixture (P2P and bounce) in
    //! `report/snapshots/` (`P2PDMA_BLESS=1 cargo test -p p2pdma report::` rewrites
    //! them), and the pure rules of the summary and the stopped copy's kind.

    use std::time::Duration;

    use super::*;
    use crate::copy::job::multipath_tests::disk;
    use crate::copy::job::{decide_route, reinterpret_einval};
    use crate::copy::route::Bounce;
    use crate::copy::EngineReport;
    use crate::report::topo::tests::snapshot;
    use crate::sysfs::SysfsRoot;

    /// A 3 MiB copy from nvme0n1 to nvme1n1 of the `switch` fixture, routed as `bounce`
    /// says.
    fn prepared(bounce: Bounce) -> Prepared {
        let sysfs =
            SysfsRoot::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/switch"));
        let (src, dst) = (disk("/dev/nvme0n1"), disk("/dev/nvme1n1"));
        let (route, sides, kernel_release) =
            decide_route(&sysfs, None, &src, &dst, bounce, None).unwrap();
        Prepared {
            src,
            dst,
            plan: CopyPlan {
                src_offset: 1 << 20,
                dst_offset: 0,
                length: 3 << 20,
                chunk_size: 1 << 20,
                queue_depth: 2,
                block_size: 512,
                grows_destination: false,
            },
            route,
            sides,
            kernel_release,
        }
    }

    fn summary_of(direction: Direction, outcome: &CopyOutcome) -> Summary {
        Summary::new(
            Path::new("/dev/nvme0n1"),
            Path::new("/dev/nvme1n1"),
            direction,
            outcome,
        )
    }

    fn outcome(prepared: Prepared, first_difference: Option<u64>) -> CopyOutcome {
        CopyOutcome {
            prepared,
            report: EngineReport {
                bytes: 3 << 20,
                elapsed: Duration::from_millis(250),
                reads: 3,
                writes: 3,
                short_transfers: 1,
                retries: 0,
                cpu_user: Duration::from_millis(20),
                cpu_system: Duration::from_millis(30),
            },
            verification: Some((
                Verification {
                    src_digest: 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
                    dst_digest: if first_difference.is_some() {
                        0x1111_2222_3333_4444_5555_6666_7777_8888
                    } else {
                        0x0123_4567_89ab_cdef_fedc_ba98_7654_3210
                    },
                    first_difference,
                },
                Duration::from_millis(125),
            )),
        }
    }

    #[test]
    fn the_dry_run_of_a_p2p_copy_and_of_a_bounce_copy_match_their_snapshots() {
        let p2p = prepared(Bounce::Never);
        assert_eq!(p2p.route.mode, Mode::P2p);
        let text = dry_run_text(Path::new("/dev/nvme0n1"), Path::new("/dev/nvme1n1"), &p2p);
        assert!(text.starts_with("plan: copy 3 MiB (3145728 bytes) from /dev/nvme0n1 [1048576..4194304) to /dev/nvme1n1 [0..3145728)\n"), "{text}");
        assert!(
            text.ends_with("dry run: nothing was read or written\n"),
            "{text}"
        );
        assert!(text.contains(&route_text(&p2p.route)), "{text}");
        snapshot("switch.copy-dry-run.txt", &text);

        let bounce = prepared(Bounce::Always);
        assert_eq!(bounce.route.mode, Mode::Bounce);
        let text = dry_run_text(
            Path::new("/dev/nvme0n1"),
            Path::new("/dev/nvme1n1"),
            &bounce,
        );
        assert!(text.contains("of host memory"), "{text}");
        snapshot("switch.copy-dry-run-bounce.txt", &text);

        let json = serde_json::to_value(DryRun::new(&p2p)).unwrap();
        assert_eq!(json["chunks"], 3);
        assert_eq!(
            json["buffer_bytes"],
            2 << 20,
            "one buffer per chunk in flight"
        );
        assert_eq!(json["plan"]["length"], 3 << 20);
        assert_eq!(json["route"]["mode"], "p2p");
        assert_eq!(json["src"]["facts"]["path"], "/dev/nvme0n1");
    }

    #[test]
    fn a_summary_says_what_moved_how_fast_and_the_digest_when_it_matched() {
        let done = outcome(prepared(Bounce::Never), None);
        let summary = summary_of(Direction::Copy, &done);
        assert_eq!(summary.throughput_bytes_per_sec, (12 << 20) as f64);
        assert_eq!(summary.cpu_seconds, 0.05);
        assert_eq!(summary.verified, Some(true));
        assert_eq!(summary.verify_seconds, Some(0.125));
        let text = summary_text(&summary, &done.prepared.route);
        let provider = done.prepared.route.provider.unwrap();
        assert_eq!(
            text,
            format!(
                "copied 3 MiB from /dev/nvme0n1 to /dev/nvme1n1 in 0.250 s (12 MiB/s), P2P through {provider}'s p2pmem\n\
                 verified: xxh3-128 0123456789abcdeffedcba9876543210 on both sides\n"
            )
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["only"], serde_json::Value::Null);
        assert_eq!(json["src_offset"], 1 << 20);
        assert_eq!(json["mode"], "p2p");

        let read = summary_of(Direction::ReadOnly, &done);
        assert_eq!(serde_json::to_value(&read).unwrap()["only"], "read");
        assert!(summary_text(&read, &done.prepared.route)
            .starts_with("read 3 MiB from /dev/nvme0n1 (--only read) in 0.250 s"));
        let write = summary_of(Direction::WriteOnly, &done);
        assert!(summary_text(&write, &done.prepared.route)
            .starts_with("wrote 3 MiB to /dev/nvme1n1 (--only write)"));
    }

    #[test]
    fn a_mismatch_names_both_files_at_their_own_offsets_and_prints_no_digest_line() {
        let bad = outcome(prepared(Bounce::Never), Some(4096));
        let summary = summary_of(Direction::Copy, &bad);
        assert_eq!(summary.verified, Some(false));
        let (v, _) = bad.verification.unwrap();
        assert_eq!(
            mismatch_text(&summary, &v),
            "verification failed: /dev/nvme1n1 offset 4096 differs from /dev/nvme0n1 offset 1052672 (xxh3-128 11112222333344445555666677778888 vs 0123456789abcdeffedcba9876543210)"
        );
        let text = summary_text(&summary, &bad.prepared.route);
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[test]
    fn a_p2p_copy_against_a_refusing_verdict_is_noted() {
        let mut route = prepared(Bounce::Never).route;
        assert_eq!(unexpected_p2p_note(&route), None);
        route.p2p_expected = Some(false);
        route.why_not = Some("ACS redirects".into());
        let note = unexpected_p2p_note(&route).unwrap();
        assert!(
            note.contains("refuse P2P (ACS redirects), but it allowed it"),
            "{note}"
        );
        route.mode = Mode::Bounce;
        assert_eq!(unexpected_p2p_note(&route), None);
    }

    fn stopped(errno: i32, kind: FailureKind) -> EngineError {
        EngineError::Stopped {
            written: crate::copy::Written {
                path: "/dev/nvme1n1".into(),
                dst_offset: 0,
                ranges: Default::default(),
            },
            failure: crate::copy::IoFailure {
                op: crate::copy::Op::Write,
                path: "/dev/nvme1n1".into(),
                offset: 0,
                len: 4096,
                kind,
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }

    fn route(p2p_expected: Option<bool>) -> Route {
        Route {
            mode: Mode::P2p,
            provider: None,
            provider_reason: None,
            pool: None,
            verdicts: Vec::new(),
            path: Vec::new(),
            bottleneck: None,
            bounce_reason: None,
            p2p_expected,
            why_not: None,
        }
    }

    fn kind_of(e: &EngineError) -> FailureKind {
        match e {
            EngineError::Stopped { failure, .. } => failure.kind,
            _ => unreachable!(),
        }
    }

    #[test]
    fn einval_on_device_memory_is_a_refusal_only_on_new_kernels_with_a_refusing_verdict() {
        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        let why = reinterpret_einval(&mut e, &route(Some(false)), Some("6.12.117"));
        assert!(why.unwrap().contains("EREMOTEIO"));
        assert_eq!(kind_of(&e), FailureKind::Other);
        let (kind, _) = failure_summary(&e, &route(Some(false)));
        assert_eq!(
            kind,
            Kind::Failure,
            "nothing written, not a refusal: exit 1"
        );

        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        assert_eq!(
            reinterpret_einval(&mut e, &route(Some(false)), Some("6.17.2")),
            None
        );
        assert_eq!(kind_of(&e), FailureKind::P2pRefused);
        assert_eq!(failure_summary(&e, &route(Some(false))).0, Kind::P2pRefused);

        let mut e = stopped(libc::EINVAL, FailureKind::P2pRefused);
        assert!(reinterpret_einval(&mut e, &route(Some(true)), Some("6.17.2")).is_some());
        assert_eq!(kind_of(&e), FailureKind::Other);

        let mut e = stopped(libc::EREMOTEIO, FailureKind::P2pRefused);
        assert_eq!(
            reinterpret_einval(&mut e, &route(Some(true)), Some("6.12.1")),
            None
        );
        assert_eq!(kind_of(&e), FailureKind::P2pRefused);
    }

    #[test]
    fn a_stop_after_some_bytes_landed_is_a_partial_copy_whatever_the_cause() {
        let mut e = stopped(libc::EREMOTEIO, FailureKind::P2pRefused);
        if let EngineError::Stopped { written, .. } = &mut e {
            written.ranges.insert(0..8192);
        }
        let (kind, summary) = failure_summary(&e, &route(Some(true)));
        assert_eq!(kind, Kind::PartialCopy);
        assert_eq!(summary.bytes_written, 8192);
        assert_eq!(summary.written, vec![[0, 8192]]);
        assert_eq!(summary.contiguous_end, Some(8192));
        assert_eq!(Kind::PartialCopy.code(), 4);
    }
}
