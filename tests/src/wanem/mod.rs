//! The userspace WAN emulator (`wanem`): its vocabulary ([`proto`]), its per-direction
//! impairment engine ([`pipeline`], pure), and the control client tests use ([`WanLink`]).
//! The binary that moves frames is `src/bin/wanem.rs`; `docs/wanem.md` is the manual.

pub mod client;
pub mod pipeline;
pub mod proto;

pub use client::{WanLink, WanLinkError};
pub use proto::{DirStats, Direction, Dirs, LinkConfig, LinkParams, LinkStats};
