//! waolb's encoder and netlink-packet-netfilter 0.4 write the same bytes for a sync's service
//! chains (the evaluation behind the README's case for waolb's own encoder; timings in
//! `cargo bench --bench encoders`).

#[path = "../benches/encoders/batches.rs"]
mod batches;

#[test]
fn both_encoders_write_the_same_messages() {
    let chains = batches::service_chains(50, 10);
    let ours = batches::waolb_batch(&chains, 100);
    let theirs = batches::crate_messages(&chains, 100);
    let ours = batches::without_frame(&ours);
    assert_eq!(ours.len(), theirs.len());
    if let Some(at) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {at}: {:02x?} against {:02x?}",
            &ours[at.saturating_sub(8)..at + 8],
            &theirs[at.saturating_sub(8)..at + 8]
        );
    }
}
