//! The default seccomp filter: allow everything except a deny list in the spirit of
//! Docker's default profile (mount and namespace manipulation, kernel modules, kexec, BPF,
//! perf, keyrings, handle-based opens, userfaultfd, ptrace, clock and swap changes, io_uring
//! unless the plan allows it), built with libseccomp so a user-notification listener can be
//! added later. Scheduling: `sched_setattr` is denied and `sched_setscheduler` allowed only
//! to SCHED_EXT, so a session task cannot leave agentd's scheduler (docs/scheduler.md) for
//! the fair class, SCHED_BATCH or SCHED_IDLE, nor set the reset-on-fork flag. The list is pure data and unit-tested; loading happens in the agent's
//! process just before exec (after no_new_privs, so no privilege is needed).

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

use crate::Error;
use crate::plan::Seccomp;

/// Denied with EPERM.
pub const DENIED: &[&str] = &[
    // mounts and the new mount API: the layout is fixed by the runtime
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    // namespaces: no new user namespace (regaining capabilities), no joining others
    "unshare",
    "setns",
    // kernel code and state
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "bpf",
    "perf_event_open",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "quotactl",
    "uselib",
    "vhangup",
    "sethostname",
    "setdomainname",
    // keyrings are not namespaced
    "keyctl",
    "add_key",
    "request_key",
    // bypasses path-based confinement
    "open_by_handle_at",
    "name_to_handle_at",
    // exploitation primitives
    "userfaultfd",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    // another process's descriptors (the daemon's, a spawner's) must not be copied in
    "pidfd_getfd",
    // scheduling policy: set by the sandbox before exec; sched_setscheduler is filtered below
    "sched_setattr",
    // time is global
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
];

/// ioctl requests denied with EPERM: TIOCSTI (push input into a terminal) and TIOCLINUX
/// (console selection and paste).
pub const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX];

/// The one policy `sched_setscheduler` may set from inside (uapi SCHED_EXT): the one the
/// sandbox gives session tasks; anything else (leaving agentd's scheduler, or setting
/// SCHED_RESET_ON_FORK, or-ed into the same argument) is EPERM.
pub const SCHED_EXT: u64 = 7;

/// io_uring: its operations are not seen by seccomp.
pub const IO_URING: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// The names denied by `cfg`.
pub fn denied(cfg: &Seccomp) -> Vec<String> {
    let mut v: Vec<String> = DENIED.iter().map(|s| (*s).to_owned()).collect();
    if !cfg.allow_io_uring {
        v.extend(IO_URING.iter().map(|s| (*s).to_owned()));
    }
    v.extend(cfg.extra_deny.iter().cloned());
    v
}

/// Builds (does not load) the filter.
pub fn build(cfg: &Seccomp) -> Result<ScmpFilterContext, Error> {
    let err = |what: &str, source| Error::Seccomp {
        what: what.to_owned(),
        source,
    };
    let mut f = ScmpFilterContext::new(ScmpAction::Allow).map_err(|e| err("new", e))?;
    // no_new_privs is set explicitly (and checked) by the caller before loading.
    f.set_ctl_nnp(true).map_err(|e| err("nnp", e))?;
    for name in denied(cfg) {
        let sc = ScmpSyscall::from_name(&name).map_err(|e| err(&name, e))?;
        f.add_rule(ScmpAction::Errno(libc::EPERM), sc)
            .map_err(|e| err(&name, e))?;
    }
    // clone with CLONE_NEWUSER (or any namespace flag): EPERM. Plain fork/threads pass.
    let clone = ScmpSyscall::from_name("clone").map_err(|e| err("clone", e))?;
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
    ] {
        let flag = flag as u64;
        f.add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            clone,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(flag),
                flag,
            )],
        )
        .map_err(|e| err("clone", e))?;
    }
    // Terminal input injection and console control (the CVE-2017-5226 pattern): the
    // kernel reads the request as a 32-bit unsigned int, so compare the low 32 bits only
    // (a full 64-bit compare is bypassed by setting high bits).
    let ioctl = ScmpSyscall::from_name("ioctl").map_err(|e| err("ioctl", e))?;
    for request in DENIED_IOCTLS {
        f.add_rule_conditional(
            ScmpAction::Errno(libc::EPERM),
            ioctl,
            &[ScmpArgCompare::new(
                1,
                ScmpCompareOp::MaskedEqual(u64::from(u32::MAX)),
                *request,
            )],
        )
        .map_err(|e| err("ioctl", e))?;
    }
    // sched_setscheduler(pid, policy, param): only policy == SCHED_EXT passes. The whole
    // 64-bit register is compared, so high bits set around a 7 are refused too (fail closed).
    let setsched =
        ScmpSyscall::from_name("sched_setscheduler").map_err(|e| err("sched_setscheduler", e))?;
    f.add_rule_conditional(
        ScmpAction::Errno(libc::EPERM),
        setsched,
        &[ScmpArgCompare::new(1, ScmpCompareOp::NotEqual, SCHED_EXT)],
    )
    .map_err(|e| err("sched_setscheduler", e))?;
    // clone3 takes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to
    // clone, which is filtered above (Docker does the same).
    let clone3 = ScmpSyscall::from_name("clone3").map_err(|e| err("clone3", e))?;
    f.add_rule(ScmpAction::Errno(libc::ENOSYS), clone3)
        .map_err(|e| err("clone3", e))?;
    Ok(f)
}

/// Compiles the filter to classic BPF (an array of `struct sock_filter`), before the fork,
/// so the child only has to hand the bytes to the kernel.
pub fn compile(f: &ScmpFilterContext) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let (mut r, w) = std::io::pipe().map_err(|e| Error::sys("pipe", e))?;
    f.export_bpf(&w).map_err(|source| Error::Seccomp {
        what: "export".to_owned(),
        source,
    })?;
    drop(w);
    let mut bpf = Vec::new();
    r.read_to_end(&mut bpf)
        .map_err(|e| Error::sys("reading the seccomp program", e))?;
    if bpf.is_empty() || bpf.len() % std::mem::size_of::<libc::sock_filter>() != 0 {
        return Err(Error::SeccompProgram { size: bpf.len() });
    }
    Ok(bpf)
}

/// Loads a compiled program into the calling thread (no_new_privs must be set).
pub fn load(bpf: &[u8]) -> Result<(), Error> {
    let n = bpf.len() / std::mem::size_of::<libc::sock_filter>();
    // The bytes came from libseccomp as sock_filter structs; copy them into a properly
    // aligned buffer.
    let mut prog: Vec<libc::sock_filter> = Vec::with_capacity(n);
    for c in bpf.chunks_exact(8) {
        prog.push(libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        });
    }
    let fprog = libc::sock_fprog {
        len: n as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `n` live sock_filter structs for the duration of the call.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            "PR_SET_SECCOMP",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn cfg() -> Seccomp {
        Seccomp {
            allow_io_uring: false,
            extra_deny: vec![],
        }
    }

    #[test]
    fn deny_list_covers_the_issue_and_resolves_on_this_arch() {
        let d = denied(&cfg());
        for must in [
            "mount",
            "umount2",
            "pivot_root",
            "kexec_load",
            "kexec_file_load",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "open_by_handle_at",
            "userfaultfd",
            "unshare",
            "setns",
            "ptrace",
            "init_module",
            "finit_module",
            "delete_module",
            "reboot",
            "swapon",
            "swapoff",
            "io_uring_setup",
            "pidfd_getfd",
            "sched_setattr",
        ] {
            assert!(d.iter().any(|n| n == must), "{must} missing");
        }
        // Every name is known to libseccomp here: building does not fail.
        let bpf = compile(&build(&cfg()).unwrap()).unwrap();
        assert!(bpf.len() > 8 * d.len());
    }

    #[test]
    fn io_uring_can_be_allowed_and_extras_added() {
        let d = denied(&Seccomp {
            allow_io_uring: true,
            extra_deny: vec!["mknod".into()],
        });
        assert!(!d.iter().any(|n| n.starts_with("io_uring")));
        assert!(d.iter().any(|n| n == "mknod"));
    }

    #[test]
    fn unknown_extra_syscall_is_an_error() {
        let e = build(&Seccomp {
            allow_io_uring: false,
            extra_deny: vec!["no_such_call".into()],
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("no_such_call"));
    }
}
