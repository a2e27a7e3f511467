//! The daemon's memory policy (issue 14): intent-driven per-call grants (memory.high = the
//! grant, memory.max bounded by the pool's limit), the agent leaf protected (memory.min/low
//! from its measured usage, never frozen), one host-wide pool lent to bursting calls on
//! memory.events `high`, an admission queue for grants that do not fit, freeze instead of kill
//! under PSI pressure (newest borrowers first, thawed in order) and a last-resort kill with
//! its reason. [`ledger`] decides (pure, host-tested); [`pool`] talks to the kernel.
//! The mechanism is described in docs/memory.md.

pub mod ledger;
pub mod pool;
pub mod table;

pub use ledger::{CallKey, Priority};
pub use pool::{MemPool, PoolSettings, PoolStatus};
