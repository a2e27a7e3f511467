//! Exec into a running session: join the init's namespaces through its pidfd (user first,
//! so the rest are permitted; pid applies to our children), start the command as a child
//! with the session's confinement (same caps drop, no_new_privs, rlimits, Landlock,
//! seccomp), optionally in a given cgroup, and wait for it.
//!
//! The runtime records what exec needs in the state dir (readable by host root only):
//! `session.json` ({plan, init pid}). The cgroup is entered from the child before exec by
//! writing to a `cgroup.procs` fd opened before joining the mount namespace (inside, the
//! cgroup tree is read-only); clone3 CLONE_INTO_CGROUP is used for the session init.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::confine::Confinement;
use crate::plan::SessionPlan;

/// What `run` leaves in the state dir for `exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The plan the session runs with.
    pub plan: SessionPlan,
    /// The init's pid in the runtime's pid namespace.
    pub init_pid: i32,
}

/// File name of the record in the state dir.
pub const RECORD: &str = "session.json";

/// Writes the record (mode 0600, root).
pub fn write_record(rec: &SessionRecord) -> Result<(), Error> {
    let p = rec.plan.workspace.state.join(RECORD);
    let json = serde_json::to_vec(rec).map_err(|e| Error::Plan(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::sys(format!("write {}", p.display()), e))
}

/// Reads the record of the session whose state dir is `state`.
pub fn read_record(state: &Path) -> Result<SessionRecord, Error> {
    let p = state.join(RECORD);
    let s = std::fs::read(&p).map_err(|e| Error::sys(format!("read {}", p.display()), e))?;
    serde_json::from_slice(&s).map_err(|e| Error::Plan(e.to_string()))
}

fn pidfd_open(pid: i32) -> Result<OwnedFd, Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(Error::sys(
            format!("pidfd_open {pid}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Runs `argv` in the session recorded in `state`; returns its exit code. Must be called
/// from a single-threaded process (joining a user namespace requires it).
pub fn exec(state: &Path, argv: &[String], cgroup: Option<&Path>) -> Result<i32, Error> {
    let rec = read_record(state)?;
    let plan = rec.plan;
    let procs = match cgroup {
        Some(cg) => {
            let p = cg.join("cgroup.procs");
            Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| Error::sys(format!("open {}", p.display()), e))?,
            )
        }
        None => None,
    };
    let pidfd = pidfd_open(rec.init_pid)?;
    let flags = crate::container::clone_flags(&plan) as libc::c_int;
    // SAFETY: setns with a valid pidfd and namespace flags; it changes only this process.
    if unsafe { libc::setns(pidfd.as_raw_fd(), flags) } < 0 {
        return Err(Error::sys(
            "setns into the session",
            std::io::Error::last_os_error(),
        ));
    }
    let confinement = Confinement {
        agent_id: plan.ids.agent_id,
        rlimits: plan.rlimits.clone(),
        landlock: plan.landlock.clone(),
        seccomp: crate::seccomp::compile(&crate::seccomp::build(&plan.seccomp)?)?,
    };
    let mut cmd = Command::new(
        argv.first()
            .ok_or_else(|| Error::Plan("no command".into()))?,
    );
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&plan.env)
        .current_dir(&plan.workspace.mount_at);
    // SAFETY: this process is single-threaded, so the child may allocate; the hook only
    // moves the child into its cgroup and confines it before exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &procs {
                use std::io::Write;
                let mut f: &std::fs::File = f;
                f.write_all(b"0")?;
            }
            confinement.apply().map_err(|e| {
                eprintln!("agentd-sandbox: confining the command: {e}");
                std::io::Error::other(e)
            })
        });
    }
    let status = cmd
        .status()
        .map_err(|e| Error::sys(format!("starting {}", argv[0]), e))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
