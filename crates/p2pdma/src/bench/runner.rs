//! Running a benchmark: inspecting and refusing targets as `copy` does, choosing the
//! provider as `copy` does, then the runs, interleaved (per case: p2p, host, p2p, host, ...,
//! with fio's runs beside ours), and the report.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::cpu::CpuTimes;
use super::fio::{self, FioJob};
use super::io::{new_histogram, run_job, Amount, JobSpec};
use super::lent::Lent;
use super::report::{
    utc_date, BenchReport, CaseResult, Clat, Engine, Machine, Measures, ProviderChoice, RunFigures,
    Summary, Totals,
};
use super::spec::{BenchRequest, MemKind, Pattern, Workload};
use super::BenchError;
use crate::copy::endpoint::{self, Inspected, Role};
use crate::copy::engine::{self, Direction, Endpoint, EngineError, FailureKind, IoRegion, Op};
use crate::copy::job;
use crate::copy::plan::{self, CopyRequest, EndpointFacts, EndpointKind, StorageId};
use crate::copy::route::{self, Bounce, RouteError};
use crate::copy::{HostBuffer, P2pSlot};
use crate::p2pmem::Provider;
use crate::sysfs::SysfsRoot;

/// Hears about each finished run (a progress bar, or nothing).
pub trait Progress {
    /// Before the first run.
    fn start(&mut self, _total_runs: u64) {}
    /// After each run (warm-up included).
    fn run_done(&mut self, _label: &str) {}
    /// After the last run.
    fn finish(&mut self) {}
}

/// No progress output.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A target as the runner uses it.
struct Target {
    inspected: Inspected,
    file: File,
}

impl Target {
    fn path(&self) -> &Path {
        &self.inspected.facts.path
    }
}

/// The buffers of one job.
enum Buffers {
    Host(Vec<HostBuffer>),
    P2p(Vec<P2pSlot>),
}

/// One p2pdma measurement.
struct Measured {
    bytes: u64,
    elapsed: Duration,
    cpu: CpuTimes,
    clat: Option<Clat>,
}

struct Ctx<'a> {
    /// Why the topology verdict expects the kernel to refuse P2P, if it does.
    predicted_refusal: Option<String>,
    sysfs: &'a SysfsRoot,
    req: &'a BenchRequest,
    src: Option<Target>,
    dst: Option<Target>,
    provider: Option<Provider>,
    /// Bytes per run, all jobs.
    size: u64,
    fio: Option<PathBuf>,
    totals: Totals,
    fio_totals: Totals,
}

/// Runs the benchmark `req`, reading facts under the sysfs root `sysfs`.
pub fn run(
    sysfs: &SysfsRoot,
    req: &BenchRequest,
    progress: &mut dyn Progress,
) -> Result<BenchReport, BenchError> {
    req.check()?;
    let fio_bin = if req.fio {
        Some(fio::locate().ok_or(BenchError::FioMissing)?)
    } else {
        None
    };
    let src = req
        .src
        .as_ref()
        .map(|p| endpoint::inspect(sysfs, p, Role::Source))
        .transpose()?;
    let dst = req
        .dst
        .as_ref()
        .map(|p| endpoint::inspect(sysfs, p, Role::Destination))
        .transpose()?;
    let size = check_targets(req, src.as_ref(), dst.as_ref())?;
    let choice = if req.modes.wants_p2p() {
        Some(choose_provider(sysfs, req, src.as_ref(), dst.as_ref())?)
    } else {
        None
    };
    let provider = match &choice {
        Some(c) => Some(
            Provider::open(sysfs, c.bdf).map_err(|source| BenchError::P2pmem {
                provider: c.bdf,
                len: 0,
                source,
            })?,
        ),
        None => None,
    };
    if let Some(p) = &provider {
        check_pool(p, req)?;
    }

    let open = |i: Option<Inspected>, role| -> Result<Option<Target>, BenchError> {
        match i {
            Some(inspected) => {
                let file = endpoint::open(&inspected.facts, role)?;
                Ok(Some(Target { inspected, file }))
            }
            None => Ok(None),
        }
    };
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut ctx = Ctx {
        predicted_refusal: choice.as_ref().and_then(|c| c.predicted_refusal.clone()),
        sysfs,
        req,
        src: open(src, Role::Source)?,
        dst: open(dst, Role::Destination)?,
        provider,
        size,
        fio: fio_bin,
        totals: Totals::default(),
        fio_totals: Totals::default(),
    };

    let kinds = req.modes.kinds();
    let halves = if req.workload == Workload::Copy { 3 } else { 1 };
    let fio_runs = if req.fio { halves } else { 0 };
    let per_case = kinds.len() as u64
        * (u64::from(req.warmup) * halves + u64::from(req.repeat) * (halves + fio_runs));
    progress.start(per_case * (req.block_sizes.len() * req.iodepths.len()) as u64);

    let mut results: Vec<CaseResult> = Vec::new();
    let mut record = |engine, measures, mode, bs, iodepth, figures: RunFigures| {
        let existing = results.iter_mut().find(|r| {
            r.engine == engine
                && r.measures == measures
                && r.mode == mode
                && r.bs == bs
                && r.iodepth == iodepth
        });
        match existing {
            Some(r) => r.runs.push(figures),
            None => results.push(CaseResult {
                engine,
                measures,
                mode,
                bs,
                iodepth,
                numjobs: req.jobs,
                runs: vec![figures],
                summary: None,
            }),
        }
    };

    let mut seed = 1u64;
    for &bs in &req.block_sizes {
        for &depth in &req.iodepths {
            let label = |what: &str, mode: MemKind| {
                format!("{what} bs {} depth {depth} {mode}", report_size(bs))
            };
            for _ in 0..req.warmup {
                for &mode in &kinds {
                    for measures in measures_of(req.workload) {
                        seed += 1;
                        ctx.measure(measures, mode, bs, depth, seed)
                            .map_err(|e| ctx.explain(mode, e))?;
                        progress.run_done(&label("warm-up", mode));
                    }
                }
            }
            for _ in 0..req.repeat {
                for &mode in &kinds {
                    for measures in measures_of(req.workload) {
                        seed += 1;
                        let m = ctx
                            .measure(measures, mode, bs, depth, seed)
                            .map_err(|e| ctx.explain(mode, e))?;
                        record(
                            Engine::P2pdma,
                            measures,
                            mode,
                            bs,
                            depth,
                            RunFigures::new(m.bytes, bs, m.elapsed, m.clat, m.cpu),
                        );
                        progress.run_done(&label("p2pdma", mode));
                    }
                    if ctx.fio.is_some() {
                        for measures in measures_of(req.workload) {
                            let figures = ctx
                                .fio_run(measures, mode, bs, depth)
                                .map_err(|e| ctx.explain(mode, e))?;
                            record(Engine::Fio, measures, mode, bs, depth, figures);
                            progress.run_done(&label("fio", mode));
                        }
                    }
                }
            }
        }
    }
    progress.finish();
    for r in &mut results {
        r.summary = Summary::of(&r.runs);
    }
    results.sort_by_key(|r| (r.bs, r.iodepth, r.measures, r.mode, r.engine));

    let fio_version = ctx.fio.as_deref().and_then(fio::version);
    let mut notes = vec![
        "bw is KiB/s and runtime ms as in fio; bw_mib_s is MiB/s; clat_ns in ns".to_owned(),
        "cpu_s_per_gib: user+system CPU seconds of the whole process (getrusage RUSAGE_SELF, io_uring workers included) per GiB; for fio from its usr_cpu/sys_cpu".to_owned(),
        "min/median/max over the measured runs; no run is left out".to_owned(),
    ];
    if req.workload == Workload::Copy {
        notes.push("copy runs the copy engine (what `p2pdma copy` runs), which does not time single requests: no clat for copy; `read alone` and `write alone` are the source and destination measured alone with the same shape, the devices' ceiling".to_owned());
        if req.fio {
            notes.push("fio's copy-equivalent: a read job from src and a write job to dst, concurrently, same bs/iodepth/numjobs/size and buffer memory; its bytes are the write job's, its time the longer job's".to_owned());
        }
    }
    if let Some(why) = &ctx.predicted_refusal {
        notes.push(format!("the topology verdict predicted that the kernel would refuse P2P ({why}), but it allowed it; please report this with `p2pdma snapshot`"));
    }
    let mut report = BenchReport {
        workload: req.workload,
        src: req.src.clone(),
        dst: req.dst.clone(),
        modes: req.modes,
        pattern: req.pattern,
        numjobs: req.jobs,
        size: ctx.size,
        runtime_s: req.runtime.map(|d| d.as_secs_f64()),
        warmup: req.warmup,
        repeat: req.repeat,
        provider: choice,
        machine: Machine {
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            unix_time: started,
            date: utc_date(started),
        },
        fio_version,
        results,
        ratios: Default::default(),
        p2pdma_totals: ctx.totals,
        fio_totals: ctx.fio_totals,
        notes,
    };
    report.compute_ratios();
    Ok(report)
}

fn report_size(bs: u64) -> String {
    super::report::short_size(bs)
}

fn measures_of(workload: Workload) -> Vec<Measures> {
    match workload {
        // The copy last, so the destination ends up holding the source's bytes.
        Workload::Copy => vec![
            Measures::CeilingRead,
            Measures::CeilingWrite,
            Measures::Workload,
        ],
        _ => vec![Measures::Workload],
    }
}

/// Alignment, bounds and destination safety; returns the bytes per run.
fn check_targets(
    req: &BenchRequest,
    src: Option<&Inspected>,
    dst: Option<&Inspected>,
) -> Result<u64, BenchError> {
    for t in [src, dst].into_iter().flatten() {
        let f = &t.facts;
        for &bs in &req.block_sizes {
            if !bs.is_multiple_of(f.block_size) {
                return Err(BenchError::UnalignedBlockSize {
                    bs,
                    path: f.path.clone(),
                    block_size: f.block_size,
                });
            }
        }
        if let Some(size) = req.size {
            if !size.is_multiple_of(f.block_size) {
                return Err(BenchError::UnalignedSize {
                    size,
                    path: f.path.clone(),
                    block_size: f.block_size,
                });
            }
        }
    }
    // The range: --size, else what every target holds.
    let available = [src, dst].into_iter().flatten().map(|t| t.facts.size).min();
    let available = available.unwrap_or(0);
    let size = match req.size {
        Some(size) => {
            if let Some(s) = src {
                if s.facts.size < size {
                    return Err(BenchError::TargetTooSmall {
                        path: s.facts.path.clone(),
                        available: s.facts.size,
                        size,
                    });
                }
            }
            size
        }
        None => {
            let block = [src, dst]
                .into_iter()
                .flatten()
                .map(|t| t.facts.block_size)
                .max()
                .unwrap_or(512);
            let size = available / block * block;
            if size == 0 {
                let path = dst
                    .or(src)
                    .map(|t| t.facts.path.clone())
                    .unwrap_or_default();
                return Err(BenchError::NoRange { path });
            }
            size
        }
    };
    // Writes get every refusal of `copy` (mounted, held, read-only, past the end of a
    // device, growing a file without --force, overlapping the source), decided here.
    if let Some(d) = dst {
        let source = match src {
            Some(s) => s.facts.clone(),
            // The write workload's source is the buffers: a stand-in that is never the
            // same storage and always large enough.
            None => EndpointFacts {
                path: PathBuf::from("(buffers)"),
                kind: EndpointKind::RegularFile,
                storage: StorageId::Unique,
                base: 0,
                size: u64::MAX,
                block_size: d.facts.block_size,
                read_only: true,
                mounted: None,
                holders: Vec::new(),
            },
        };
        plan::validate(
            &source,
            &d.facts,
            &CopyRequest {
                src_offset: 0,
                dst_offset: 0,
                length: Some(size),
                chunk_size: source.block_size.max(d.facts.block_size),
                queue_depth: 1,
                force: req.force,
            },
        )?;
    }
    for &bs in &req.block_sizes {
        if size / u64::from(req.jobs) < bs {
            return Err(BenchError::RangeTooSmall {
                size,
                jobs: req.jobs,
                bs,
            });
        }
    }
    Ok(size)
}

/// The provider, chosen as `copy` chooses (`--provider`, else the destination's or the
/// source's own memory, else the closest published one), or why p2p is impossible.
fn choose_provider(
    sysfs: &SysfsRoot,
    req: &BenchRequest,
    src: Option<&Inspected>,
    dst: Option<&Inspected>,
) -> Result<ProviderChoice, BenchError> {
    let tree = job::read_tree(sysfs, req.kernel_release.as_deref()).map_err(|e| {
        BenchError::P2pImpossible {
            why: format!(
                "the PCI tree under {} cannot be read ({e})",
                sysfs.path().display()
            ),
        }
    })?;
    let providers: Vec<_> = tree.providers().map(|f| f.bdf).collect();
    if let Some(bdf) = req.provider {
        if !providers.contains(&bdf) {
            return Err(RouteError::NotAProvider {
                bdf,
                available: providers,
            }
            .into());
        }
    }
    if providers.is_empty() {
        return Err(BenchError::P2pImpossible {
            why: format!(
                "no PCI device offers p2pmem (no {}/bus/pci/devices/*/p2pmem: the kernel lacks CONFIG_PCI_P2PDMA or no device exposes P2P memory)",
                sysfs.path().display()
            ),
        });
    }
    let a = src.or(dst).expect("check() requires a target");
    let b = dst.or(src).expect("check() requires a target");
    let rules = crate::kernel_rules::RuleChoice::for_release(tree.host.kernel_release.as_deref());
    let sides = job::pci_sides(sysfs, &rules, a, b);
    let route = route::decide(&tree, &sides[0], &sides[1], Bounce::Never, req.provider).map_err(
        |e| match e {
            RouteError::SideNotP2p { path, why, .. } => BenchError::P2pImpossible {
                why: format!("{} cannot take part in P2P DMA: {why}", path.display()),
            },
            RouteError::NoProviders => BenchError::P2pImpossible {
                why: "no PCI device offers p2pmem".into(),
            },
            e => BenchError::Route(e),
        },
    )?;
    // As `copy` does, P2P is still tried when the verdict predicts a refusal: the kernel
    // has the last word (a refused run fails with the verdict's reason attached).
    let predicted_refusal = (route.p2p_expected == Some(false)).then(|| {
        route
            .why_not
            .clone()
            .unwrap_or_else(|| "the topology verdict says the kernel will refuse".into())
    });
    let bdf = route
        .provider
        .ok_or_else(|| BenchError::Internal("a P2P route without a provider".into()))?;
    Ok(ProviderChoice {
        bdf,
        reason: route.provider_reason,
        pool_size: route.pool.map(|p| p.size),
        pool_available: route.pool.map(|p| p.available),
        path: route.path,
        predicted_refusal,
    })
}

/// Every case's buffers (ours, and fio's when it runs) must fit the pool.
fn check_pool(provider: &Provider, req: &BenchRequest) -> Result<(), BenchError> {
    let available = provider.available().map_err(|source| BenchError::P2pmem {
        provider: provider.bdf(),
        len: 0,
        source,
    })?;
    let page = rustix::param::page_size() as u64;
    let bs = req.block_sizes.iter().copied().max().unwrap_or(0);
    let depth = u64::from(req.iodepths.iter().copied().max().unwrap_or(0));
    let jobs = u64::from(req.jobs);
    // The copy engine keeps `depth` reads and `depth` writes in flight, each in a buffer.
    let per_depth = if req.workload == Workload::Copy { 2 } else { 1 };
    let ours = jobs * per_depth * depth * bs.div_ceil(page) * page;
    let mut needs = vec![(ours, "the largest case".to_owned())];
    if req.fio {
        let per_job = (depth * bs + page).div_ceil(page) * page;
        let groups = if req.workload == Workload::Copy { 2 } else { 1 };
        needs.push((groups * jobs * per_job, "fio's largest case".to_owned()));
    }
    for (needed, what) in needs {
        if needed > available {
            return Err(BenchError::PoolTooSmall {
                provider: provider.bdf(),
                available,
                needed,
                what,
            });
        }
    }
    Ok(())
}

/// A non-zero pattern, so written data cannot be mistaken for untouched zeros.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(1..)).collect()
}

impl Ctx<'_> {
    /// A refused P2P request, told with the topology's reason and what to do.
    fn explain(&self, mode: MemKind, e: BenchError) -> BenchError {
        let refused = match &e {
            BenchError::Io { kind, .. } => *kind == FailureKind::P2pRefused,
            BenchError::Engine {
                source: EngineError::Stopped { failure, .. },
                ..
            } => failure.kind == FailureKind::P2pRefused,
            _ => false,
        };
        match (&self.provider, refused && mode == MemKind::P2p) {
            (Some(p), true) => BenchError::P2pRefused {
                provider: p.bdf(),
                why: self.predicted_refusal.clone().unwrap_or_else(|| {
                    "the topology verdict expected P2P to work; the kernel's log (dmesg) says why it did not".into()
                }),
                source: Box::new(e),
            },
            _ => e,
        }
    }

    fn buffers(
        &self,
        mode: MemKind,
        count: u32,
        bs: u64,
        fill: bool,
    ) -> Result<Buffers, BenchError> {
        let data = fill.then(|| pattern(bs as usize, u64::from(count) ^ bs));
        match mode {
            MemKind::Host => {
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let mut b = HostBuffer::new(bs as usize)?;
                    if let Some(d) = &data {
                        b.as_mut_slice()[..d.len()].copy_from_slice(d);
                    }
                    v.push(b);
                }
                Ok(Buffers::Host(v))
            }
            MemKind::P2p => {
                let provider = self
                    .provider
                    .as_ref()
                    .ok_or_else(|| BenchError::Internal("p2p run without a provider".into()))?;
                let err = |source| BenchError::P2pmem {
                    provider: provider.bdf(),
                    len: bs,
                    source,
                };
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let mut b = provider.allocate(bs as usize).map_err(err)?;
                    if let Some(d) = &data {
                        b.write_from(0, d).map_err(err)?;
                    }
                    v.push(P2pSlot::new(b).map_err(err)?);
                }
                Ok(Buffers::P2p(v))
            }
        }
    }

    fn amount(&self, stride: u64) -> Amount {
        match self.req.runtime {
            Some(t) => Amount::Time(t),
            None => Amount::Bytes(stride),
        }
    }

    /// Each job's range: `stride` bytes (a multiple of bs) from `job * stride`.
    fn stride(&self, bs: u64) -> u64 {
        self.size / u64::from(self.req.jobs) / bs * bs
    }

    fn measure(
        &mut self,
        measures: Measures,
        mode: MemKind,
        bs: u64,
        depth: u32,
        seed: u64,
    ) -> Result<Measured, BenchError> {
        let op = match (self.req.workload, measures) {
            (Workload::Copy, Measures::Workload) => return self.measure_copy(mode, bs, depth),
            (Workload::Read, _) | (_, Measures::CeilingRead) => Op::Read,
            _ => Op::Write,
        };
        let target = match op {
            Op::Read => self.src.as_ref(),
            Op::Write => self.dst.as_ref(),
        }
        .ok_or_else(|| BenchError::Internal("a run without its target".into()))?;
        let pattern = if measures == Measures::Workload {
            self.req.pattern
        } else {
            Pattern::Seq
        };
        let stride = self.stride(bs);
        let mut per_job = Vec::new();
        for _ in 0..self.req.jobs {
            per_job.push(self.buffers(mode, depth, bs, op == Op::Write)?);
        }
        let specs: Vec<JobSpec> = (0..u64::from(self.req.jobs))
            .map(|j| JobSpec {
                op,
                start: j * stride,
                blocks: stride / bs,
                bs,
                pattern,
                amount: self.amount(stride),
                seed: seed.wrapping_mul(1000).wrapping_add(j),
            })
            .collect();
        let (file, path) = (&target.file, target.path());
        let cpu0 = CpuTimes::now().map_err(BenchError::Cpu)?;
        let t0 = Instant::now();
        let outcomes = on_threads(
            &specs,
            per_job,
            |spec, bufs| match bufs {
                Buffers::Host(b) => run_job(file, path, spec, b),
                Buffers::P2p(b) => run_job(file, path, spec, b),
            },
            || Err(BenchError::Internal("a job thread panicked".into())),
        );
        let elapsed = t0.elapsed();
        let cpu = CpuTimes::now().map_err(BenchError::Cpu)?.since(cpu0);
        let mut clat = new_histogram();
        let mut bytes = 0;
        let mut first_error = None;
        for o in outcomes {
            match o {
                Ok(o) => {
                    bytes += o.bytes;
                    clat.add(&o.clat)
                        .map_err(|e| BenchError::Internal(format!("merging histograms: {e:?}")))?;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Bytes that moved before an error still moved: count them for the totals.
        match op {
            Op::Read => self.totals.read_bytes += bytes,
            Op::Write => self.totals.written_bytes += bytes,
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(Measured {
            bytes,
            elapsed,
            cpu,
            clat: Clat::from_histogram(&clat),
        })
    }

    fn measure_copy(&mut self, mode: MemKind, bs: u64, depth: u32) -> Result<Measured, BenchError> {
        let (Some(src), Some(dst)) = (self.src.as_ref(), self.dst.as_ref()) else {
            return Err(BenchError::Internal("a copy without both targets".into()));
        };
        let stride = self.stride(bs);
        let mut plans = Vec::new();
        let mut per_job = Vec::new();
        for j in 0..u64::from(self.req.jobs) {
            plans.push(plan::validate(
                &src.inspected.facts,
                &dst.inspected.facts,
                &CopyRequest {
                    src_offset: j * stride,
                    dst_offset: j * stride,
                    length: Some(stride),
                    chunk_size: bs,
                    queue_depth: depth,
                    force: self.req.force,
                },
            )?);
        }
        // The engine keeps `depth` reads and `depth` writes in flight, each in its own
        // buffer, as fio's copy-equivalent (a read job and a write job, each at `depth`)
        // does; fewer buffers would make reads wait for writes.
        for plan in &plans {
            let wanted = engine::buffers_wanted(Direction::Copy, plan);
            per_job.push(self.buffers(mode, u32::try_from(wanted).unwrap_or(depth), bs, false)?);
        }
        let runtime = self.req.runtime;
        let ends = (
            Endpoint {
                file: &src.file,
                path: src.path(),
            },
            Endpoint {
                file: &dst.file,
                path: dst.path(),
            },
        );
        let cpu0 = CpuTimes::now().map_err(BenchError::Cpu)?;
        let t0 = Instant::now();
        let outcomes = on_threads(
            &plans,
            per_job,
            |plan, bufs| match bufs {
                Buffers::Host(b) => copy_passes(ends, plan, b, mode, runtime, t0),
                Buffers::P2p(b) => copy_passes(ends, plan, b, mode, runtime, t0),
            },
            || {
                (
                    0,
                    Some(BenchError::Internal("a copy thread panicked".into())),
                )
            },
        );
        let elapsed = t0.elapsed();
        let cpu = CpuTimes::now().map_err(BenchError::Cpu)?.since(cpu0);
        let mut bytes = 0;
        let mut first_error = None;
        for (b, e) in outcomes {
            bytes += b;
            if let Some(e) = e {
                first_error.get_or_insert(e);
            }
        }
        self.totals.read_bytes += bytes;
        self.totals.written_bytes += bytes;
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(Measured {
            bytes,
            elapsed,
            cpu,
            clat: None,
        })
    }

    fn fio_run(
        &mut self,
        measures: Measures,
        mode: MemKind,
        bs: u64,
        depth: u32,
    ) -> Result<RunFigures, BenchError> {
        let fio = self
            .fio
            .clone()
            .ok_or_else(|| BenchError::Internal("fio run without fio".into()))?;
        let mem = match mode {
            MemKind::P2p => Some(fio::p2pmem_option(
                self.sysfs,
                self.provider
                    .as_ref()
                    .ok_or_else(|| BenchError::Internal("p2p fio run without a provider".into()))?
                    .bdf(),
            )),
            MemKind::Host => None,
        };
        let stride = self.stride(bs);
        let rand = measures == Measures::Workload && self.req.pattern == Pattern::Rand;
        let job = |name: &str, op: Op, path: &Path| FioJob {
            name: name.to_owned(),
            rw: match (op, rand) {
                (Op::Read, false) => "read",
                (Op::Read, true) => "randread",
                (Op::Write, false) => "write",
                (Op::Write, true) => "randwrite",
            },
            filename: path.to_owned(),
            bs,
            iodepth: depth,
            numjobs: self.req.jobs,
            size: stride,
            runtime: self.req.runtime,
            mem: mem.clone(),
        };
        let src = self.src.as_ref().map(|t| t.path().to_owned());
        let dst = self.dst.as_ref().map(|t| t.path().to_owned());
        let need = |p: Option<PathBuf>| {
            p.ok_or_else(|| BenchError::Internal("fio without its target".into()))
        };
        let out_err = |job: &str| {
            let job = job.to_owned();
            move |why: String| BenchError::FioOutput { job, why }
        };
        match (self.req.workload, measures) {
            (Workload::Copy, Measures::Workload) => {
                let jobs = [
                    job("copy-read", Op::Read, &need(src)?),
                    job("copy-write", Op::Write, &need(dst)?),
                ];
                let out = fio::run(&fio, &jobs)?;
                let r = fio::parse(&out, "copy-read", "read").map_err(out_err("copy-read"))?;
                let w = fio::parse(&out, "copy-write", "write").map_err(out_err("copy-write"))?;
                self.fio_totals.read_bytes += r.io_bytes;
                self.fio_totals.written_bytes += w.io_bytes;
                let cpu = CpuTimes {
                    user: r.cpu.user + w.cpu.user,
                    system: r.cpu.system + w.cpu.system,
                };
                Ok(RunFigures::new(
                    w.io_bytes,
                    bs,
                    Duration::from_millis(r.runtime_ms.max(w.runtime_ms)),
                    None,
                    cpu,
                ))
            }
            (Workload::Read, _) | (_, Measures::CeilingRead) => {
                let out = fio::run(&fio, &[job("read", Op::Read, &need(src)?)])?;
                let r = fio::parse(&out, "read", "read").map_err(out_err("read"))?;
                self.fio_totals.read_bytes += r.io_bytes;
                Ok(r.figures(bs))
            }
            _ => {
                let out = fio::run(&fio, &[job("write", Op::Write, &need(dst)?)])?;
                let w = fio::parse(&out, "write", "write").map_err(out_err("write"))?;
                self.fio_totals.written_bytes += w.io_bytes;
                Ok(w.figures(bs))
            }
        }
    }
}

/// Runs `job` on its own thread for each item with that item's buffers, all at once, and
/// returns the outcomes in item order; a thread that panicked yields `on_panic()`.
fn on_threads<T: Sync, O: Send>(
    items: &[T],
    per_job: Vec<Buffers>,
    job: impl Fn(&T, Buffers) -> O + Sync,
    on_panic: impl Fn() -> O,
) -> Vec<O> {
    std::thread::scope(|s| {
        let job = &job;
        let handles: Vec<_> = items
            .iter()
            .zip(per_job)
            .map(|(item, bufs)| s.spawn(move || job(item, bufs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| on_panic()))
            .collect()
    })
}

/// Copy passes over `plan` with the same buffers until `runtime` (from `t0`) is up, or
/// once. Returns the bytes copied and the error that stopped it, if any.
fn copy_passes<R: IoRegion>(
    ends: (Endpoint<'_>, Endpoint<'_>),
    plan: &plan::CopyPlan,
    buffers: Vec<R>,
    mode: MemKind,
    runtime: Option<Duration>,
    t0: Instant,
) -> (u64, Option<BenchError>) {
    let mut bytes = 0;
    loop {
        let lent: Vec<Lent<'_, R>> = buffers.iter().map(Lent).collect();
        match engine::run(ends.0, ends.1, plan, lent, &mut |_| {}) {
            Ok(report) => bytes += report.bytes,
            Err(source) => {
                if let EngineError::Stopped { written, .. } = &source {
                    bytes += written.ranges.total();
                }
                if matches!(
                    source,
                    EngineError::RingFailed { .. } | EngineError::Stalled { .. }
                ) {
                    // Requests may still be in flight into these buffers: never free them.
                    std::mem::forget(buffers);
                }
                return (bytes, Some(BenchError::Engine { mode, source }));
            }
        }
        match runtime {
            Some(t) if t0.elapsed() < t => continue,
            _ => return (bytes, None),
        }
    }
}
