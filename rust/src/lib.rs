//! waolb's native core.
//!
//! * [`weights`]: WAO scores and the numgen layout that turns weights into traffic shares.
//! * [`netlink`]: a minimal NETLINK_NETFILTER socket that sends one atomic batch and reads
//!   its errors, and dumps objects back.
//! * [`nft`]: encoders for the nf_tables objects and expressions a service proxy needs, and
//!   decoders for the rules it reads back.
//! * [`ruleset`]: the desired state, the ledger of what the kernel holds, the plan of a
//!   sync and the batch that programs it, full or partial.
//! * [`dataplane`]: a ruleset and its kernel: syncs that refuse ports one by one, and the
//!   endpoint rules read back.
//!
//! The Python binding (`waolb._native`) lives in the `python` module, behind the `python`
//! feature; refusals on demand for tests, behind `fault-injection`.

pub mod dataplane;
pub mod netlink;
pub mod nft;
pub mod ruleset;
pub mod weights;

#[cfg(feature = "python")]
mod python;
