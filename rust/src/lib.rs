//! waolb's native core.
//!
//! * [`weights`]: WAO scores and the numgen layout that turns weights into traffic shares.
//! * [`netlink`]: a minimal NETLINK_NETFILTER socket that sends one atomic batch and reads
//!   its errors.
//! * [`nft`]: encoders for the nf_tables objects and expressions a service proxy needs.
//! * [`ruleset`]: the desired state and the batch that programs it, full or partial.
//!
//! The Python binding (`waolb._native`) lives in `python.rs` behind the `python` feature.

pub mod dataplane;
pub mod netlink;
pub mod nft;
pub mod ruleset;
pub mod weights;

#[cfg(feature = "python")]
mod python;
