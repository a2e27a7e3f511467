//! The doctor's seam to the host: files under a root (the real `/`, or a fake tree in unit
//! tests) and live probes that ask the kernel by trying (faked in unit tests).

use std::path::{Path, PathBuf};

use agentd_bpf::probe::Feature;

/// Answers the kernel gives when asked by trying.
pub trait LiveProbes {
    /// Creating user, mount, pid, net, ipc, uts and cgroup namespaces (in a throwaway child).
    fn namespaces(&self) -> Result<(), String>;
    /// The Landlock ABI version.
    fn landlock_abi(&self) -> Result<u32, String>;
    /// clone3 with CLONE_INTO_CGROUP: `Ok(true)` supported, `Ok(false)` unknown flag.
    fn clone_into_cgroup(&self) -> Result<bool, String>;
    /// Whether BPF programs of a type load (see `agentd_bpf::probe`).
    fn bpf_loadable(&self, feature: Feature) -> Result<bool, String>;
    /// Whether the kernel BTF at `path` has a struct of this name.
    fn btf_has_struct(&self, path: &Path, name: &str) -> Result<bool, String>;
    /// `uname -r`.
    fn kernel_release(&self) -> String;
    /// Whether agentd's sched_ext scheduler loads (verified by the kernel, not attached).
    fn sched_loads(&self) -> Result<(), String>;
}

/// Files plus live probes.
pub trait Host: LiveProbes {
    /// Where `/` is (a fake tree in tests).
    fn root(&self) -> &Path;

    /// `root` + an absolute path.
    fn path(&self, abs: &str) -> PathBuf {
        self.root().join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(abs))
    }

    fn exists(&self, abs: &str) -> bool {
        self.path(abs).exists()
    }

    /// Whether this process may write to a file or directory (access(2), W_OK).
    fn writable(&self, abs: &str) -> bool;
}

/// The running host.
#[derive(Debug)]
pub struct RealHost {
    root: PathBuf,
}

impl RealHost {
    pub fn new() -> RealHost {
        RealHost {
            root: PathBuf::from("/"),
        }
    }
}

impl Default for RealHost {
    fn default() -> Self {
        RealHost::new()
    }
}

impl Host for RealHost {
    fn root(&self) -> &Path {
        &self.root
    }

    fn writable(&self, abs: &str) -> bool {
        access_writable(&self.path(abs))
    }
}

fn access_writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl LiveProbes for RealHost {
    fn namespaces(&self) -> Result<(), String> {
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        // SAFETY: fork in a possibly multi-threaded process: the child only calls unshare and
        // _exit, both async-signal-safe, and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", errno_text(last_errno())));
        }
        if pid == 0 {
            // SAFETY: see above; the child exits with unshare's errno (0 on success).
            unsafe {
                let rc = libc::unshare(flags);
                let code = if rc == 0 {
                    0
                } else {
                    *libc::__errno_location()
                };
                libc::_exit(code & 0xff);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child we just forked; `status` is a valid out pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            return Err(format!("waitpid: {}", errno_text(last_errno())));
        }
        match libc::WEXITSTATUS(status) {
            0 if libc::WIFEXITED(status) => Ok(()),
            e => Err(format!(
                "unshare(user|mount|pid|net|ipc|uts|cgroup): {}",
                errno_text(e)
            )),
        }
    }

    fn landlock_abi(&self) -> Result<u32, String> {
        // The sandbox's own probe: doctor and sessions can never disagree on the ABI.
        agentd_sandbox::fsrules::probe_abi().map_err(|e| e.to_string())
    }

    fn clone_into_cgroup(&self) -> Result<bool, String> {
        cgctl::clone3::into_cgroup_supported().map_err(|e| format!("clone3: {e}"))
    }

    fn bpf_loadable(&self, feature: Feature) -> Result<bool, String> {
        agentd_bpf::probe::loadable(feature)
    }

    fn sched_loads(&self) -> Result<(), String> {
        agentd_bpf::sched::Scheduler::load(&agentd_bpf::sched::Config::default(), false)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn btf_has_struct(&self, path: &Path, name: &str) -> Result<bool, String> {
        agentd_bpf::btf::KernelBtf::load(path)
            .map(|btf| btf.has_struct(name))
            .map_err(|e| e.to_string())
    }

    fn kernel_release(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }
}
