//! The container init (PID 1 of the session's pid namespace): `agentd-sandbox init`,
//! exec'd by [`crate::container::start`] as container root with full capabilities in its
//! new user namespace. It reads the plan from fd 3, builds the mount namespace
//! ([`crate::mounts`]), brings loopback up, sets the hostname, tells the runtime on fd 4
//! and waits for its go (the daemon binds its sockets inside meanwhile), then starts the agent command
//! confined ([`crate::confine`]) and stays as a reaper: it forwards signals to the agent,
//! reaps orphans, and when the agent exits kills whatever is left and exits with its status.

use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::Error;
use crate::confine::Confinement;
use crate::container::PLAN_FD;
use crate::plan::SessionPlan;
use crate::sys::LinuxSys;

/// Signals the init forwards to the agent.
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// What the runtime sends the init on fd 3.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Launch {
    /// The session plan.
    pub plan: SessionPlan,
    /// The agent command (argv; argv[0] looked up in the plan's PATH).
    pub argv: Vec<String>,
}

/// Reads the launch message the runtime sent on fd 3.
pub fn read_launch() -> Result<Launch, Error> {
    // SAFETY: the runtime passes the plan pipe as fd 3 and nothing else in this process
    // owns it; it is read once, here.
    let mut f = unsafe { std::fs::File::from_raw_fd(PLAN_FD) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|e| Error::sys("reading the plan", e))?;
    serde_json::from_slice(&buf).map_err(|e| Error::json("the plan", e))
}

/// Brings `lo` up in the (new) network namespace.
pub fn loopback_up() -> Result<(), Error> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0");
    // Binding needs lo only for 127.0.0.1; 0.0.0.0 works with every interface down.
    let sock = sock.map_err(|e| Error::sys("socket", e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the live `ifr` on a valid socket.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(Error::sys(
                "SIOCGIFFLAGS lo",
                std::io::Error::last_os_error(),
            ));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(Error::sys(
                "SIOCSIFFLAGS lo",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// The fd of the init's end of the start handshake with the runtime.
pub const SYNC_FD: std::os::fd::RawFd = 4;

/// Takes the handshake socket the clone3 child installed on [`SYNC_FD`].
pub fn sync_fd() -> Result<std::os::unix::net::UnixStream, Error> {
    crate::launch::sync_socket(SYNC_FD)
}

/// Runs the init: returns the agent's exit code once it and every other process are gone.
/// (The death signal was set by the clone3 child, after its id change; execve keeps it.)
pub fn run() -> Result<i32, Error> {
    let sync = sync_fd()?;
    run_launch(read_launch()?, sync)
}

/// The init's work once it has its launch message: used by [`run`] (the re-executed init)
/// and directly by the clone3 child when the runtime was single-threaded
/// ([`crate::container::start`] skips the second exec then). Once the container is built
/// it says [`crate::launch::READY`] on `sync` and starts the agent only on
/// [`crate::launch::GO`].
pub fn run_launch(launch: Launch, sync: std::os::unix::net::UnixStream) -> Result<i32, Error> {
    let Launch { plan, argv } = launch;
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    if plan.namespaces.uts {
        nix::unistd::sethostname(&plan.hostname).map_err(|e| Error::sys("sethostname", e))?;
    }
    crate::mounts::apply(&LinuxSys, &plan.mount_steps())?;
    if plan.namespaces.net {
        loopback_up()?;
    }
    {
        use std::io::Write;
        use std::os::fd::AsFd;
        let mut sync = sync;
        if plan.capture_exec {
            // On the init itself, so the agent and all it forks inherit it; the listener
            // goes to the runtime (then its spawner) and is closed here, so nothing in the
            // container can answer its own execs (docs/capture.md).
            let listener = crate::capture::install()?;
            crate::capture::send_byte_and_fd(sync.as_fd(), crate::launch::READY, listener.as_fd())
                .map_err(|e| Error::sys("telling the runtime the container is up", e))?;
        } else {
            sync.write_all(&[crate::launch::READY])
                .map_err(|e| Error::sys("telling the runtime the container is up", e))?;
        }
        match crate::launch::read_byte(&mut sync) {
            Ok(Some(crate::launch::GO)) => {}
            Ok(_) => return Err(Error::NotStarted),
            Err(e) => return Err(Error::sys("waiting for the runtime's go", e)),
        }
        // Dropped here: the agent never inherits the handshake.
    }
    let confinement = Confinement {
        agent_id: plan.ids.agent_id,
        rlimits: plan.rlimits.clone(),
        landlock: plan.effective_landlock(),
        seccomp: crate::seccomp::compile(&crate::seccomp::build(&plan.seccomp)?)?,
        sched_ext: plan.sched_ext,
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(*s);
    }
    // Blocked here and taken with sigwait; the agent's child unblocks them before exec.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| Error::sys("sigprocmask", e))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(&plan.env)
        .current_dir(plan.cwd.as_ref().unwrap_or(&plan.workspace.mount_at));
    // SAFETY: the init is single-threaded, so the child may allocate; `apply` only changes
    // the child's own credentials, limits and filters before exec.
    unsafe {
        cmd.pre_exec(move || {
            // The init blocks the signals it forwards; the agent must not inherit that.
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            // A session of its own: a terminal the runtime was started from is never the
            // agent's controlling terminal (no TIOCSTI injection into it, /dev/tty is ENXIO).
            nix::unistd::setsid()?;
            confinement.apply().map_err(|e| {
                // std passes only the errno back to the parent: say what failed here.
                eprintln!("agentd-sandbox: confining the agent: {e}");
                match e {
                    Error::Sys { source, .. } => source,
                    other => std::io::Error::other(other),
                }
            })
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::sys(format!("starting {}", argv[0]), e))?;
    let agent = Pid::from_raw(child.id() as libc::pid_t);
    drop(child);
    loop {
        let sig = mask.wait().map_err(|e| Error::sys("sigwait", e))?;
        if sig != Signal::SIGCHLD {
            let _ = kill(agent, sig);
            continue;
        }
        while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            let code = match st {
                WaitStatus::Exited(p, c) if p == agent => c,
                WaitStatus::Signaled(p, s, _) if p == agent => 128 + s as i32,
                WaitStatus::StillAlive => break,
                _ => continue,
            };
            // The agent is gone: the session ends; no orphan outlives it.
            let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            while waitpid(Pid::from_raw(-1), None).is_ok() {}
            return Ok(code);
        }
    }
}
