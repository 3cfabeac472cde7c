//! `cargo bench --bench encoders`: the time to encode one full sync's service chains (10 000
//! services x 10 endpoints, 110 000 messages) with waolb's encoder and with
//! netlink-packet-netfilter 0.4, best of several runs each. The two produce the same bytes
//! (rust/tests/encoders.rs checks it).

mod batches;

use std::hint::black_box;
use std::time::{Duration, Instant};

fn best_of(runs: usize, mut encode: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..runs {
        let start = Instant::now();
        bytes = black_box(encode());
        best = best.min(start.elapsed());
    }
    (best, bytes)
}

fn main() {
    let chains = batches::service_chains(10_000, 10);
    let (waolb, waolb_bytes) = best_of(7, || {
        let batch = batches::waolb_batch(&chains, 1);
        batches::without_frame(&batch).len()
    });
    let (crate_time, crate_bytes) = best_of(7, || batches::crate_messages(&chains, 1).len());
    println!("encode 10 000 service chains x 10 endpoint rules (best of 7):");
    println!("  waolb nft/netlink encoder:    {waolb:>10.2?}  {waolb_bytes} bytes");
    println!("  netlink-packet-netfilter 0.4: {crate_time:>10.2?}  {crate_bytes} bytes");
    println!(
        "  ratio: {:.2}",
        crate_time.as_secs_f64() / waolb.as_secs_f64()
    );
}
