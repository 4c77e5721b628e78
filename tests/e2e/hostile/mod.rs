//! Hostile guests get nothing (issue 21): every test here is an attack made
//! the way a hostile guest would make it, through the real WIT and
//! wasi:http, and asserts what must be observed instead.
//!
//! One module per area, so the attacks on each part of the sandbox read
//! together:
//! - `capture`: credentials captured by the host, scrubbing per guest
//! - `limits`: no panics, one memory limit per guest, bounded host work
//! - `surface`: the host log, the admin API and CLI, addresses and files

mod capture;
mod limits;
mod surface;
