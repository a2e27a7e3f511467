//! Confinement of the agent process, applied in the forked child right before exec, in this
//! order (each step needs what the previous one still allows): no_new_privs; drop the
//! bounding set and ambient caps (needs CAP_SETPCAP, still held as container root);
//! setgroups/setresgid/setresuid to the agent id (clears permitted and effective caps);
//! clear inheritable caps with capset; rlimits; Landlock; seccomp last. Before all of them,
//! when the plan says so, the SCHED_EXT policy (agentd's scheduler, docs/scheduler.md) (it denies nothing
//! the earlier steps need, and loading it requires no_new_privs).
//!
//! The container init is single-threaded, so the allocations Landlock and libseccomp make
//! in the child are safe in practice; the seccomp filter is compiled before the fork.

use std::collections::BTreeMap;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::Error;
use crate::plan::{Landlock, Rlimit};

/// The `RLIMIT_*` resource for a plan name.
pub fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "core" => Resource::RLIMIT_CORE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "fsize" => Resource::RLIMIT_FSIZE,
        "as" => Resource::RLIMIT_AS,
        "stack" => Resource::RLIMIT_STACK,
        "cpu" => Resource::RLIMIT_CPU,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        _ => return None,
    })
}

fn prctl(what: &str, op: libc::c_int, arg: libc::c_ulong) -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe {
        libc::prctl(
            op,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(Error::sys(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// Clears effective, permitted and inheritable capabilities of the calling thread.
pub fn clear_capability_sets() -> Result<(), Error> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let d = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and a two-element data array of the v3 layout, both live for the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut CapHeader, d.as_ptr()) };
    if r < 0 {
        return Err(Error::sys("capset", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops every capability from the bounding set and the ambient set.
pub fn drop_bounding_and_ambient() -> Result<(), Error> {
    for cap in 0..64 {
        // SAFETY: integer-only prctl.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past the kernel's last capability.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(Error::sys(format!("PR_CAPBSET_DROP {cap}"), e));
        }
    }
    prctl(
        "PR_CAP_AMBIENT_CLEAR_ALL",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )
}

/// Everything the agent's confinement needs, prepared before the fork.
#[derive(Debug)]
pub struct Confinement {
    /// Inside uid = gid of the agent.
    pub agent_id: u32,
    /// Resource limits.
    pub rlimits: BTreeMap<String, Rlimit>,
    /// Landlock rules.
    pub landlock: Landlock,
    /// The compiled seccomp program ([`crate::seccomp::compile`]).
    pub seccomp: Vec<u8>,
    /// Switch to SCHED_EXT first ([`crate::plan::SessionPlan::sched_ext`]).
    pub sched_ext: bool,
}

/// Puts the calling process in the SCHED_EXT policy (inherited by everything it forks). A
/// failure is an error: the plan asked for a kernel that has it.
pub fn set_sched_ext() -> Result<(), Error> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on ourselves with a live param struct.
    let r =
        unsafe { libc::sched_setscheduler(0, crate::seccomp::SCHED_EXT as libc::c_int, &param) };
    if r < 0 {
        return Err(Error::sys(
            "sched_setscheduler(SCHED_EXT)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Confinement {
    /// Applies the whole confinement to the calling process (see the module doc for order).
    pub fn apply(&self) -> Result<(), Error> {
        // First: unprivileged users may set SCHED_EXT too, but nothing after this needs
        // to change the policy, and seccomp (last) forbids every other one.
        if self.sched_ext {
            set_sched_ext()?;
        }
        prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
        drop_bounding_and_ambient()?;
        setgroups(&[]).map_err(|e| Error::sys("setgroups", e))?;
        let g = Gid::from_raw(self.agent_id);
        setresgid(g, g, g).map_err(|e| Error::sys("setresgid", e))?;
        let u = Uid::from_raw(self.agent_id);
        setresuid(u, u, u).map_err(|e| Error::sys("setresuid", e))?;
        clear_capability_sets()?;
        for (name, lim) in &self.rlimits {
            let res = rlimit_resource(name).ok_or_else(|| Error::UnknownRlimit {
                name: name.to_string(),
            })?;
            // Raising a hard limit needs CAP_SYS_RESOURCE in the initial namespace, which
            // container root never has: a plan limit above the runtime's is clamped to it.
            let (_, cur_hard) =
                getrlimit(res).map_err(|e| Error::sys(format!("getrlimit {name}"), e))?;
            let hard = lim.hard.min(cur_hard);
            setrlimit(res, lim.soft.min(hard), hard)
                .map_err(|e| Error::sys(format!("setrlimit {name}"), e))?;
        }
        crate::fsrules::restrict(&self.landlock)?;
        crate::seccomp::load(&self.seccomp)
    }
}
