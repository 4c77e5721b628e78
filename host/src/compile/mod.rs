//! How a `.wasm` becomes running code, in one place: the engine and its
//! settings ([`engine`]), the board profiles that fix those settings and the
//! target of a board's artifacts ([`board`]), compiling and loading a
//! component and type-checking it against a linker ([`component`]), the
//! on-disk cache of compiled code ([`artifact_cache`]), the worker process
//! that compiles off the host's memory ([`worker`]), the guests' versions
//! remembered across starts ([`digests`]) and `wattedge compile`'s
//! precompiling for a board ([`precompile`]).
//!
//! It knows nothing of capabilities, config files or the supervisor: the
//! linker and the store data type come from the caller (see
//! [`component::load_source`]), so config and capabilities may use its
//! settings types without a cycle. Tier-up (swapping quick code for optimized
//! code in a running guest) is the supervisor's, in `supervisor::tier_up`,
//! because it changes a running guest; the compiling it asks for is here.

pub mod artifact_cache;
pub mod board;
mod compiler;
pub mod component;
pub mod digests;
pub mod engine;
#[cfg(not(target_arch = "arm"))]
pub mod precompile;
pub mod worker;
