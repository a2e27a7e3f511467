//! Loader for `callacct.bpf.c`: per-call CPU time on and off CPU and run-queue wait, from the
//! scheduler tracepoints, keyed by the call's cgroup id. Works under any scheduler (the fair
//! class on a kernel without sched_ext, agentd's scheduler with it). The daemon
//! [`CallAcct::watch`]es a call's cgroup before its first task starts and
//! [`CallAcct::take`]s the figures when it ends.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};

mod skel {
    #![allow(
        clippy::all,
        clippy::pedantic,
        missing_docs,
        missing_debug_implementations
    )]
    // Generated code: libbpf-cargo's skeleton panics on impossible object layouts.
    #![allow(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
    #![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]
    include!(concat!(env!("OUT_DIR"), "/callacct.skel.rs"));
}

/// Errors loading the program or using its map.
#[derive(Debug, thiserror::Error)]
pub enum AcctError {
    #[error("opening the call accounting BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the call accounting program (needs CAP_BPF and CAP_PERFMON): {0}")]
    Load(#[source] libbpf_rs::Error),
    #[error("attaching the call accounting program to the sched tracepoints: {0}")]
    Attach(#[source] libbpf_rs::Error),
    #[error("call accounting map: {0}")]
    Map(#[source] libbpf_rs::Error),
}

/// One call's figures (struct call_acct of intf.h), nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub on_cpu_ns: u64,
    pub runq_wait_ns: u64,
    pub off_cpu_ns: u64,
    pub runq_wait_max_ns: u64,
    pub runs: u64,
    pub wakeups: u64,
}

const FIGURES: usize = 48;

impl Figures {
    fn from_bytes(b: &[u8]) -> Option<Figures> {
        let f = |i: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(Figures {
            on_cpu_ns: f(0)?,
            runq_wait_ns: f(1)?,
            off_cpu_ns: f(2)?,
            runq_wait_max_ns: f(3)?,
            runs: f(4)?,
            wakeups: f(5)?,
        })
    }
}

/// The attached program.
#[derive(Debug)]
pub struct CallAcct {
    _links: Vec<Link>,
    acct: MapHandle,
}

impl CallAcct {
    /// Loads and attaches the program.
    pub fn load() -> Result<CallAcct, AcctError> {
        let mut storage = MaybeUninit::uninit();
        let open = skel::CallacctSkelBuilder::default()
            .open(&mut storage)
            .map_err(AcctError::Open)?;
        let mut loaded = open.load().map_err(AcctError::Load)?;
        loaded.attach().map_err(AcctError::Attach)?;
        let links = [
            loaded.links.acct_wakeup.take(),
            loaded.links.acct_wakeup_new.take(),
            loaded.links.acct_switch.take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let acct = MapHandle::try_from(&loaded.maps.acct).map_err(AcctError::Map)?;
        Ok(CallAcct {
            _links: links,
            acct,
        })
    }

    /// Starts counting for `cgroup_id` (from zero).
    pub fn watch(&self, cgroup_id: u64) -> Result<(), AcctError> {
        self.acct
            .update(&cgroup_id.to_ne_bytes(), &[0u8; FIGURES], MapFlags::ANY)
            .map_err(AcctError::Map)
    }

    /// The figures of `cgroup_id` so far, without forgetting it.
    pub fn peek(&self, cgroup_id: u64) -> Option<Figures> {
        let v = self
            .acct
            .lookup(&cgroup_id.to_ne_bytes(), MapFlags::ANY)
            .ok()??;
        Figures::from_bytes(&v)
    }

    /// The figures of `cgroup_id`, forgetting it.
    pub fn take(&self, cgroup_id: u64) -> Option<Figures> {
        let f = self.peek(cgroup_id);
        let _ = self.acct.delete(&cgroup_id.to_ne_bytes());
        f
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn figures_read_in_the_c_order() {
        let mut b = [0u8; FIGURES];
        for i in 0..6u64 {
            b[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&(i + 1).to_ne_bytes());
        }
        let f = Figures::from_bytes(&b).unwrap();
        assert_eq!((f.on_cpu_ns, f.wakeups), (1, 6));
        assert!(Figures::from_bytes(&b[..40]).is_none());
    }
}
