//! The raw clone3(2) interface, shared by [`crate::spawn`] and by callers that need their
//! own work between clone and exec (the session sandbox enters namespaces and confines the
//! child there): `struct clone_args` and the flags libc does not define at the right width.

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CloneArgs {
    /// CLONE_* flags (namespace flags, [`CLONE_PIDFD`], [`CLONE_INTO_CGROUP`], …).
    pub flags: u64,
    /// With [`CLONE_PIDFD`]: address of an `int` that receives the pidfd.
    pub pidfd: u64,
    /// With CLONE_CHILD_SETTID/CLEARTID: address in the child.
    pub child_tid: u64,
    /// With CLONE_PARENT_SETTID: address in the parent.
    pub parent_tid: u64,
    /// Signal sent to the parent when the child exits (usually SIGCHLD).
    pub exit_signal: u64,
    /// Lowest address of the child's stack (0: share the parent's layout, like fork).
    pub stack: u64,
    /// Size of that stack.
    pub stack_size: u64,
    /// With CLONE_SETTLS: the new TLS.
    pub tls: u64,
    /// Address of an array of pids to give the child, one per pid namespace level.
    pub set_tid: u64,
    /// Length of that array.
    pub set_tid_size: u64,
    /// With [`CLONE_INTO_CGROUP`]: a cgroup2 directory fd to start the child in.
    pub cgroup: u64,
}

/// Return a pidfd for the child in [`CloneArgs::pidfd`].
pub const CLONE_PIDFD: u64 = 0x1000;
/// Start the child in the cgroup [`CloneArgs::cgroup`] (Linux 5.7).
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Calls clone3 with `args`: returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// Without CLONE_VM and a stack this behaves like fork: in a multi-threaded process the
/// child may only make async-signal-safe calls until it execs or exits. Pointers in `args`
/// (pidfd, tids, set_tid) must be valid for the kernel to write or read.
pub unsafe fn clone3(args: &mut CloneArgs) -> std::io::Result<libc::pid_t> {
    // SAFETY: the caller upholds the contract above; the size passed is the struct's size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret as libc::pid_t)
}

/// Whether the kernel knows clone3 with [`CLONE_INTO_CGROUP`]: `Ok(true)` yes, `Ok(false)`
/// the flag is unknown (Linux < 5.7), `Err` clone3 itself failed otherwise (e.g. ENOSYS).
///
/// Asks with an fd that cannot be open (INT_MAX): a kernel that knows the flag fails with
/// EBADF, one that does not with EINVAL. No process is created.
pub fn into_cgroup_supported() -> std::io::Result<bool> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: i32::MAX as u64,
        ..CloneArgs::default()
    };
    // SAFETY: no pointers in `args`; with an invalid cgroup fd the kernel refuses before
    // creating a child. Should it ever create one, the child leaves at once without touching
    // Rust state and the parent reaps it.
    match unsafe { clone3(&mut args) } {
        Ok(0) => {
            // SAFETY: in the (impossible) child: exit immediately.
            unsafe { libc::_exit(0) }
        }
        Ok(pid) => {
            let mut status = 0;
            // SAFETY: reaping the child just created; `status` is a valid out pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}
