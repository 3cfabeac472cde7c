//! waolb's native core.
//!
//! * [`weights`]: WAO scores and the numgen layout that turns weights into traffic shares.
//! * [`netlink`]: a minimal NETLINK_NETFILTER socket that sends one atomic batch and reads
//!   its errors, and dumps objects back.
//! * [`nft`]: encoders for the nf_tables objects and expressions a service proxy needs, and
//!   decoders for the rules it reads back.
//! * [`ruleset`]: the desired state and the batch that programs it, full or partial.
//! * [`dataplane`]: a ruleset and its socket: syncs, and the endpoint rules read back.
//!
//! The Python binding (`waolb._native`) lives in `python.rs` behind the `python` feature.

pub mod dataplane;
pub mod netlink;
pub mod nft;
pub mod ruleset;
pub mod weights;

#[cfg(feature = "python")]
mod python;
