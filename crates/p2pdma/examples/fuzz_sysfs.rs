//! The sysfs reader fuzz harness as a bounded random loop, for machines without
//! nightly/libFuzzer: `cargo run --release -p p2pdma --example fuzz_sysfs -- [ITERATIONS] [SEED]`.
//! The same harness runs under cargo-fuzz as `fuzz/fuzz_targets/sysfs_reader.rs`.

#[path = "../../../fuzz/harness.rs"]
mod harness;

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let seed: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    // Deterministic from the seed, so a crash can be replayed.
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = std::time::Instant::now();
    let mut accepted = 0u64;
    for i in 0..iterations {
        let mut data = vec![0u8; rng.usize(..1024)];
        rng.fill(&mut data);
        let result = std::panic::catch_unwind(|| harness::run(&data));
        if matches!(result, Ok(true)) {
            accepted += 1;
        }
        if result.is_err() {
            let path = format!("fuzz-crash-{seed}-{i}.bin");
            std::fs::write(&path, &data).expect("write crash input");
            eprintln!("iteration {i}: panic; input saved to {path}");
            std::process::exit(1);
        }
    }
    println!(
        "fuzz_sysfs: {iterations} random inputs (seed {seed}), no panic; {accepted} trees accepted and checked (verdicts, matrix, snapshot round trip), the rest rejected with an error; {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
