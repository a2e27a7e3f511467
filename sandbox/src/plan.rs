//! The session plan: pure data describing one session container (namespaces, root, workspace,
//! environment, rlimits, masked paths, seccomp, Landlock), and the builder that turns it into
//! the ordered list of mount [`Step`]s the container init performs. Nothing here touches the
//! kernel, so all of it is unit-tested without root.
//!
//! The policy crate will produce a [`SessionPlan`]; until it does, [`SessionPlan::new`] gives
//! the coding-agent default (host root read-only, tmpfs /tmp, /run and /home).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::rights::FsRight;
pub use crate::step::Step;

/// Namespaces the container gets. All are on by default; the user namespace is mandatory
/// (container root must not be host root), so it is not a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespaces {
    /// A new network namespace with only loopback (up). `false` shares the host network.
    pub net: bool,
    /// ipc, uts and cgroup namespaces.
    pub ipc: bool,
    /// New UTS namespace (hostname below).
    pub uts: bool,
    /// New cgroup namespace (the session sees its own cgroup as the root).
    pub cgroup: bool,
}

impl Default for Namespaces {
    fn default() -> Self {
        Namespaces {
            net: true,
            ipc: true,
            uts: true,
            cgroup: true,
        }
    }
}

/// Who is who: inside ids and the host ids they map to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host uid/gid that container root (uid 0 inside) maps to: an unprivileged id, never 0.
    pub root_host_id: u32,
    /// Uid/gid the agent runs as inside.
    pub agent_id: u32,
    /// Host uid/gid the agent's id maps to: the session owner, so files it creates in the
    /// upper layer belong to the owner and the repo's files are writable through the overlay.
    pub agent_host_id: u32,
}

/// The overlay workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// The repo on the host: the overlay's read-only lower layer.
    pub repo: PathBuf,
    /// Where the merged view appears inside the container (default: the repo's own path).
    pub mount_at: PathBuf,
    /// The session state dir on the host: the layer image `layer.img` mounted at `layer/`
    /// (holding `upper/`, `work/`, `tmp/`, `home/`: [`crate::disk`]) and `rootfs/` (the new
    /// root's mount point).
    pub state: PathBuf,
    /// Size of the layer image in bytes (the session's disk quota).
    pub size_bytes: u64,
}

/// One resource limit (`RLIMIT_*` by name: "nofile", "core", "nproc", "fsize", "as", "stack").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Filesystem access granted by a Landlock rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsAccess {
    /// Read files and directories, execute files.
    ReadExec,
    /// Everything (read, write, create, remove, …).
    ReadWrite,
}

/// A Landlock path rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRule {
    /// Path inside the container.
    pub path: PathBuf,
    /// What is allowed beneath it.
    pub access: FsAccess,
    /// When true a path that does not exist is skipped; otherwise it is an error.
    pub optional: bool,
}

/// Landlock configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Landlock {
    /// Path rules: anything not beneath one of them is denied.
    pub rules: Vec<LandlockRule>,
    /// When false, a kernel without Landlock is an error. When true the session runs
    /// without it, said on stderr and recorded in `session.json`.
    pub optional: bool,
    /// Rights the session may run without when the kernel's ABI predates them (enforced
    /// whenever the kernel has them; said on stderr and recorded when not). Every other
    /// right is required: see [`Landlock::min_abi`].
    #[serde(default)]
    pub optional_rights: Vec<FsRight>,
}

/// The Landlock rights the coding-agent default plan may run without.
///
/// Only `resolve_unix`: connecting to pathname Unix sockets is restricted from ABI 9 (Linux
/// 7.1) on. Older kernels (6.12, the fallback) run the session without that one right, said
/// on stderr and recorded in `session.json`: the mount layout already hides the host's
/// sockets in /run and /tmp (the container's own tmpfs), so what stays reachable is a
/// socket elsewhere on the read-only host root that the owner's uid may connect to.
/// Everything else is required, so the default plan needs ABI 5 (Linux 6.10).
pub fn default_optional_rights() -> Vec<FsRight> {
    vec![FsRight::ResolveUnix]
}

impl Landlock {
    /// The rights the kernel must enforce (all but the optional ones).
    pub fn required_rights(&self) -> Vec<FsRight> {
        FsRight::ALL
            .into_iter()
            .filter(|r| !self.optional_rights.contains(r))
            .collect()
    }

    /// The lowest Landlock ABI that enforces every required right.
    pub fn min_abi(&self) -> u32 {
        self.required_rights()
            .into_iter()
            .map(FsRight::abi)
            .max()
            .unwrap_or(0)
    }
}

/// Seccomp configuration: a deny list in the spirit of Docker's default profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    /// Allow io_uring (denied by default: it bypasses seccomp for the ops it performs).
    pub allow_io_uring: bool,
    /// Extra syscall names to deny with EPERM.
    pub extra_deny: Vec<String>,
}

/// A host file or directory bound read-only (and nosuid, nodev) into the container, e.g. the
/// daemon's tool-call shim at a fixed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRo {
    /// Host path: an existing regular file or directory, reachable by container root (the
    /// init resolves it by path before pivot_root).
    pub source: PathBuf,
    /// Absolute path inside. Created on the container's own tmpfs when it lies under one of
    /// the plan's `tmpfs` dirs (/tmp, /run, /home); elsewhere it must already exist in the
    /// read-only root with the source's type.
    pub target: PathBuf,
}

/// Everything needed to start one session container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPlan {
    /// Namespaces beyond user/mount/pid (always on).
    pub namespaces: Namespaces,
    /// Id mapping.
    pub ids: IdMap,
    /// Hostname inside (with a UTS namespace).
    pub hostname: String,
    /// The workspace overlay.
    pub workspace: Workspace,
    /// The agent's home inside (a tmpfs under /home).
    pub home: PathBuf,
    /// Directories of the read-only host root covered by a writable tmpfs.
    pub tmpfs: Vec<PathBuf>,
    /// Host paths hidden inside (an empty read-only tmpfs over them), e.g. other sessions'
    /// state.
    pub hidden: Vec<PathBuf>,
    /// Paths masked as OCI does: files get /dev/null bound over them, directories an empty
    /// read-only tmpfs.
    pub masked: Vec<PathBuf>,
    /// Paths made read-only (on top of the read-only root: these are under /proc).
    pub read_only: Vec<PathBuf>,
    /// Host files and directories bound read-only into the container.
    #[serde(default)]
    pub bind_ro: Vec<BindRo>,
    /// The root: `None` is the host root (read-only); `Some(dir)` an OCI bundle's rootfs,
    /// bound read-only in its place ([`crate::oci`]).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The agent's working directory (default: the workspace).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The environment of the agent: exactly these variables.
    pub env: BTreeMap<String, String>,
    /// Resource limits by name.
    pub rlimits: BTreeMap<String, Rlimit>,
    /// Seccomp filter.
    pub seccomp: Seccomp,
    /// Landlock rules.
    pub landlock: Landlock,
    /// Set SCHED_EXT on the agent and every call before their exec (a kernel with
    /// sched_ext): agentd's scheduler, when attached, schedules them; without one they run
    /// as SCHED_NORMAL. The seccomp filter then keeps them there (docs/scheduler.md).
    #[serde(default)]
    pub sched_ext: bool,
    /// Exec capture (docs/capture.md): every program a process of the agent leaf execs is
    /// held in the kernel until the daemon has placed it in a call of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_exec: bool,
}

/// OCI's default masked paths (runtime-spec config-linux, runc's defaults).
pub const OCI_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// OCI's default read-only paths.
pub const OCI_READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Bound of a writable tmpfs that is not on the session layer (`/run`, a bundle's tmpfs):
/// it is memory, so it stays small whatever the disk quota.
pub const MEMORY_TMPFS_BYTES: u64 = 64 << 20;

/// `state/layer/upper` of a session state dir: the overlay's upper layer.
pub fn upper_of(state: &Path) -> PathBuf {
    crate::disk::layer_dir(state).join("upper")
}

/// Device nodes bound from the host into the minimal /dev.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Environment variables passed through from the caller when set (everything else is
/// dropped).
pub const ENV_PASSTHROUGH: &[&str] = &["TERM", "LANG", "LC_ALL", "TZ"];

impl SessionPlan {
    /// The coding-agent default for one workspace: host root read-only, tmpfs at /tmp, /run
    /// and /home, the agent as uid 1000 inside mapped to `owner` outside, container root
    /// mapped to `root_host_id`.
    pub fn new(repo: &Path, state: &Path, size_bytes: u64, owner: u32, root_host_id: u32) -> Self {
        let home = PathBuf::from("/home/agent");
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".to_owned(),
        );
        env.insert("HOME".to_owned(), home.display().to_string());
        env.insert("USER".to_owned(), "agent".to_owned());
        env.insert("TMPDIR".to_owned(), "/tmp".to_owned());
        let mut rlimits = BTreeMap::new();
        rlimits.insert("core".to_owned(), Rlimit { soft: 0, hard: 0 });
        rlimits.insert(
            "nofile".to_owned(),
            Rlimit {
                soft: 4096,
                hard: 65536,
            },
        );
        let rw = |p: &str| LandlockRule {
            path: PathBuf::from(p),
            access: FsAccess::ReadWrite,
            optional: false,
        };
        let mut rules = vec![
            LandlockRule {
                path: PathBuf::from("/"),
                access: FsAccess::ReadExec,
                optional: false,
            },
            rw("/tmp"),
            rw("/run"),
            rw("/dev"),
            rw("/home"),
        ];
        rules.push(LandlockRule {
            path: repo.to_path_buf(),
            access: FsAccess::ReadWrite,
            optional: false,
        });
        SessionPlan {
            namespaces: Namespaces::default(),
            ids: IdMap {
                root_host_id,
                agent_id: 1000,
                agent_host_id: owner,
            },
            hostname: "agentd".to_owned(),
            workspace: Workspace {
                repo: repo.to_path_buf(),
                mount_at: repo.to_path_buf(),
                state: state.to_path_buf(),
                size_bytes,
            },
            home,
            tmpfs: vec![
                PathBuf::from("/tmp"),
                PathBuf::from("/run"),
                PathBuf::from("/home"),
            ],
            hidden: vec![state.to_path_buf()],
            masked: OCI_MASKED.iter().map(PathBuf::from).collect(),
            read_only: OCI_READ_ONLY.iter().map(PathBuf::from).collect(),
            bind_ro: Vec::new(),
            root: None,
            cwd: None,
            env,
            rlimits,
            seccomp: Seccomp {
                allow_io_uring: false,
                extra_deny: Vec::new(),
            },
            landlock: Landlock {
                rules,
                optional: false,
                optional_rights: default_optional_rights(),
            },
            sched_ext: false,
            capture_exec: false,
        }
    }

    /// `state/layer/upper`: the overlay's upper layer (the session's changes).
    pub fn upper_dir(&self) -> PathBuf {
        upper_of(&self.workspace.state)
    }
    /// `state/layer/work`: overlayfs's work dir.
    pub fn work_dir(&self) -> PathBuf {
        crate::disk::layer_dir(&self.workspace.state).join("work")
    }
    /// `state/layer/tmp`: the container's `/tmp`, on the session's quota.
    pub fn layer_tmp_dir(&self) -> PathBuf {
        crate::disk::layer_dir(&self.workspace.state).join("tmp")
    }
    /// `state/layer/home`: the container's `/home`, on the session's quota.
    pub fn layer_home_dir(&self) -> PathBuf {
        crate::disk::layer_dir(&self.workspace.state).join("home")
    }
    /// The layer dir a plan tmpfs is replaced by (`/tmp`, `/home`), if any.
    fn on_layer(&self, t: &Path) -> Option<PathBuf> {
        if t == Path::new("/tmp") {
            Some(self.layer_tmp_dir())
        } else if t == Path::new("/home") {
            Some(self.layer_home_dir())
        } else {
            None
        }
    }
    /// `state/rootfs`: mount point of the new root (only ever mounted inside the container's
    /// mount namespace).
    pub fn rootfs_dir(&self) -> PathBuf {
        self.workspace.state.join("rootfs")
    }

    /// Checks what must hold before anything is applied.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.ids.root_host_id == 0 {
            return Err(PlanError::RootMapsToHostRoot);
        }
        if self.ids.agent_host_id == 0 || self.ids.agent_id == 0 {
            return Err(PlanError::RootAgent);
        }
        for p in [
            &self.workspace.repo,
            &self.workspace.mount_at,
            &self.workspace.state,
            &self.home,
        ]
        .into_iter()
        .chain(self.root.iter())
        .chain(self.cwd.iter())
        {
            if !p.is_absolute() {
                return Err(PlanError::NotAbsolute { path: p.clone() });
            }
        }
        if let Some(r) = &self.root
            && (r == Path::new("/")
                || r.starts_with(&self.workspace.state)
                || r.starts_with(&self.workspace.repo))
        {
            return Err(PlanError::BadRoot { root: r.clone() });
        }
        if self.workspace.size_bytes < 1024 * 1024 {
            return Err(PlanError::TinyWorkspace {
                bytes: self.workspace.size_bytes,
            });
        }
        if self.workspace.state.starts_with(&self.workspace.repo)
            || self.workspace.repo.starts_with(&self.workspace.state)
        {
            return Err(PlanError::StateAndRepoNested);
        }
        for p in [&self.workspace.repo, &self.workspace.state] {
            if let Some(ch) = overlay_special_char(p) {
                return Err(PlanError::OverlaySpecial {
                    path: p.clone(),
                    ch,
                });
            }
        }
        for name in self.rlimits.keys() {
            if crate::confine::rlimit_resource(name).is_none() {
                return Err(PlanError::UnknownRlimit { name: name.clone() });
            }
        }
        for b in &self.bind_ro {
            self.validate_bind(b).map_err(|problem| PlanError::Bind {
                source_path: b.source.clone(),
                target: b.target.clone(),
                problem,
            })?;
        }
        Ok(())
    }

    /// A read-only bind: both paths absolute and normal; the destination not the root, not
    /// in the kernel filesystems mounted after it (/proc, /dev), and neither inside nor
    /// around the workspace (it would shadow the overlay or be shadowed by it).
    fn validate_bind(&self, b: &BindRo) -> Result<(), BindError> {
        for p in [&b.source, &b.target] {
            if !p.is_absolute() {
                return Err(BindError::NotAbsolute { path: p.clone() });
            }
            if p.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            }) {
                return Err(BindError::DotComponents { path: p.clone() });
            }
        }
        let t = &b.target;
        if t == Path::new("/") {
            return Err(BindError::AtRoot);
        }
        for kernel in ["/proc", "/dev"] {
            if t.starts_with(kernel) {
                return Err(BindError::UnderKernelFs { fs: kernel });
            }
        }
        let ws = &self.workspace.mount_at;
        if t.starts_with(ws) || ws.starts_with(t) {
            return Err(BindError::AroundWorkspace {
                workspace: ws.clone(),
            });
        }
        if b.source.starts_with(&self.workspace.state) {
            return Err(BindError::FromStateDir);
        }
        Ok(())
    }

    /// Whether `p` lies on one of the container's own writable tmpfs (where a bind
    /// destination can be created).
    fn on_own_tmpfs(&self, p: &Path) -> bool {
        self.tmpfs.iter().any(|t| p.starts_with(t) && p != t)
    }

    /// The Landlock configuration the agent (and every exec) gets: the plan's rules plus
    /// read + execute beneath each read-only bind's destination (the mount itself is
    /// read-only, so nothing more is ever possible there).
    pub fn effective_landlock(&self) -> Landlock {
        let mut l = self.landlock.clone();
        l.rules.extend(self.bind_ro.iter().map(|b| LandlockRule {
            path: b.target.clone(),
            access: FsAccess::ReadExec,
            optional: false,
        }));
        l
    }

    /// The ordered mount steps the container init performs (before pivot_root all paths
    /// are in the pre-pivot namespace, i.e. prefixed with the rootfs dir).
    ///
    /// Order and why:
    /// 1. make every mount private, so nothing we do propagates back to the host;
    /// 2. bind the host root recursively at `rootfs` and make the whole tree read-only
    ///    (mount_setattr AT_RECURSIVE: submounts too, in one call);
    /// 3. writable tmpfs over /tmp, /run, /home (they are mount points of the read-only tree;
    ///    the agent's home and the workspace mount point are created inside them);
    /// 4. hide host paths (other sessions' state) with empty read-only tmpfs (masks);
    /// 5. the overlay workspace: its lower dir is named by its host path, which still
    ///    resolves because the old root is not gone yet; then the read-only binds (their
    ///    sources are host paths too);
    /// 6. a fresh procfs for the new pid namespace, then the minimal /dev;
    /// 7. OCI masked and read-only paths: after proc and /dev, which they live on;
    /// 8. pivot_root and detach the old root.
    pub fn mount_steps(&self) -> Vec<Step> {
        let root = self.rootfs_dir();
        let inside = |p: &Path| -> PathBuf {
            let rel = p.strip_prefix("/").unwrap_or(p);
            root.join(rel)
        };
        let mut steps = vec![
            Step::MakePrivate,
            Step::BindRoot {
                source: self.root.clone().unwrap_or_else(|| PathBuf::from("/")),
                target: root.clone(),
            },
            Step::ReadOnly {
                target: root.clone(),
                recursive: true,
            },
        ];
        for t in &self.tmpfs {
            // /tmp and /home are directories of the session layer (on its disk quota);
            // any other writable tmpfs (/run: sockets, a bundle's) is memory, so it gets a
            // small bound of its own.
            if let Some(source) = self.on_layer(t) {
                steps.push(Step::Bind {
                    source,
                    target: inside(t),
                });
                continue;
            }
            let mode = if t == Path::new("/tmp") {
                0o1777
            } else {
                0o755
            };
            steps.push(Step::Tmpfs {
                target: inside(t),
                mode,
                size_bytes: Some(self.workspace.size_bytes.min(MEMORY_TMPFS_BYTES)),
                read_only: false,
            });
        }
        steps.push(Step::MkdirAll {
            path: inside(&self.home),
            mode: 0o700,
            owner: Some(self.ids.agent_id),
        });
        // A hidden path already under one of the fresh tmpfs does not exist there: the
        // mask step skips it.
        for h in &self.hidden {
            steps.push(Step::Mask { target: inside(h) });
        }
        let ws = inside(&self.workspace.mount_at);
        steps.push(Step::MkdirAll {
            path: ws.clone(),
            mode: 0o755,
            owner: None,
        });
        steps.push(Step::Overlay {
            lower: self.workspace.repo.clone(),
            upper: self.upper_dir(),
            work: self.work_dir(),
            target: ws,
        });
        for b in &self.bind_ro {
            steps.push(Step::BindRo {
                source: b.source.clone(),
                target: inside(&b.target),
                create: self.on_own_tmpfs(&b.target),
            });
        }
        steps.push(Step::Proc {
            target: inside(Path::new("/proc")),
        });
        let dev = inside(Path::new("/dev"));
        steps.push(Step::Tmpfs {
            target: dev.clone(),
            mode: 0o755,
            size_bytes: Some(64 * 1024),
            read_only: false,
        });
        for node in DEV_NODES {
            steps.push(Step::BindFile {
                source: Path::new("/dev").join(node),
                target: dev.join(node),
            });
        }
        for (name, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            steps.push(Step::Symlink {
                to: PathBuf::from(to),
                link: dev.join(name),
            });
        }
        steps.push(Step::Devpts {
            target: dev.join("pts"),
        });
        steps.push(Step::MkdirAll {
            path: dev.join("shm"),
            mode: 0o1777,
            owner: None,
        });
        steps.push(Step::Tmpfs {
            target: dev.join("shm"),
            mode: 0o1777,
            size_bytes: Some(64 * 1024 * 1024),
            read_only: false,
        });
        for m in &self.masked {
            steps.push(Step::Mask { target: inside(m) });
        }
        for r in &self.read_only {
            steps.push(Step::ReadOnly {
                target: inside(r),
                recursive: false,
            });
        }
        steps.push(Step::PivotRoot { new_root: root });
        steps
    }
}

/// The unit tests' plan: the default for `/srv/repo` with its state at `state`, 64 MiB.
#[cfg(test)]
pub(crate) fn example(state: &str) -> SessionPlan {
    SessionPlan::new(
        Path::new("/srv/repo"),
        Path::new(state),
        64 << 20,
        1000,
        100_000,
    )
}

/// Why a [`SessionPlan`] is refused before anything is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("container root must not map to host root (root_host_id = 0)")]
    RootMapsToHostRoot,
    #[error("the agent must not run as root (inside or outside)")]
    RootAgent,
    #[error("{} is not absolute", path.display())]
    NotAbsolute { path: PathBuf },
    #[error(
        "root {} must be a directory outside the workspace and the state dir (the host root \
         is the default, not a bundle)",
        root.display()
    )]
    BadRoot { root: PathBuf },
    #[error("workspace size cap below 1 MiB ({bytes} bytes)")]
    TinyWorkspace { bytes: u64 },
    #[error("state dir and repo must not contain each other")]
    StateAndRepoNested,
    #[error(
        "{} contains {ch:?}, which the overlay mount's options cannot carry (it separates \
         layers or options); rename the directory",
        path.display()
    )]
    OverlaySpecial { path: PathBuf, ch: char },
    #[error("unknown rlimit {name:?}")]
    UnknownRlimit { name: String },
    #[error("read-only bind {}:{}: {problem}", source_path.display(), target.display())]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        problem: BindError,
    },
}

/// The first character of `path` that the overlay mount's option string would read as
/// syntax (`:` between lower layers, `,` between options, `\\` as an escape; a newline
/// for good measure): such a workspace or state path is refused, never formatted in.
pub fn overlay_special_char(path: &Path) -> Option<char> {
    path.to_string_lossy()
        .chars()
        .find(|c| matches!(c, ':' | ',' | '\\' | '\n'))
}

/// What is wrong with a read-only bind of the plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error("{} is not absolute", path.display())]
    NotAbsolute { path: PathBuf },
    #[error("{} contains `.` or `..` components", path.display())]
    DotComponents { path: PathBuf },
    #[error("the destination cannot be the root")]
    AtRoot,
    #[error("the destination cannot be under {fs} (mounted by the sandbox)")]
    UnderKernelFs { fs: &'static str },
    #[error("the destination must not be inside (or contain) the workspace {}", workspace.display())]
    AroundWorkspace { workspace: PathBuf },
    #[error("the source is inside the session's own state dir")]
    FromStateDir,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code
    use super::*;

    fn plan() -> SessionPlan {
        example("/var/lib/agentd/s1")
    }

    #[test]
    fn default_plan_validates() {
        plan().validate().unwrap();
    }

    #[test]
    fn host_root_mappings_are_refused() {
        let mut p = plan();
        p.ids.root_host_id = 0;
        assert!(p.validate().unwrap_err().to_string().contains("host root"));
        let mut p = plan();
        p.ids.agent_host_id = 0;
        assert!(p.validate().is_err());
    }

    #[test]
    fn nested_state_and_repo_are_refused() {
        let p = SessionPlan::new(
            Path::new("/srv/repo"),
            Path::new("/srv/repo/.state"),
            64 << 20,
            1000,
            100_000,
        );
        assert!(p.validate().unwrap_err().to_string().contains("contain"));
    }

    #[test]
    fn paths_the_overlay_options_would_misread_are_refused() {
        for (repo, ch) in [
            ("/srv/a:b", ':'),
            ("/srv/a,upperdir=/etc", ','),
            ("/srv/a\\b", '\\'),
            ("/srv/a\nb", '\n'),
        ] {
            let p = SessionPlan::new(
                Path::new(repo),
                Path::new("/var/lib/agentd/s1"),
                64 << 20,
                1000,
                100_000,
            );
            assert_eq!(
                p.validate().unwrap_err(),
                PlanError::OverlaySpecial {
                    path: PathBuf::from(repo),
                    ch
                }
            );
        }
        let p = SessionPlan::new(
            Path::new("/srv/repo"),
            Path::new("/var/lib/a,b/s1"),
            64 << 20,
            1000,
            100_000,
        );
        assert!(p.validate().unwrap_err().to_string().contains("rename"));
        assert_eq!(overlay_special_char(Path::new("/srv/plain-repo_1.x")), None);
    }

    #[test]
    fn unknown_rlimit_is_refused() {
        let mut p = plan();
        p.rlimits
            .insert("bogus".into(), Rlimit { soft: 1, hard: 1 });
        assert!(p.validate().unwrap_err().to_string().contains("bogus"));
    }

    fn with_bind(source: &str, target: &str) -> SessionPlan {
        let mut p = plan();
        p.bind_ro.push(BindRo {
            source: PathBuf::from(source),
            target: PathBuf::from(target),
        });
        p
    }

    #[test]
    fn read_only_binds_are_validated() {
        with_bind("/usr/lib/agentd/shim", "/run/agentd/bin/shim")
            .validate()
            .unwrap();
        with_bind("/opt/tools", "/opt/tools").validate().unwrap();
        for (src, dst, why) in [
            ("usr/x", "/run/x", "not absolute"),
            ("/usr/x", "run/x", "not absolute"),
            ("/usr/x", "/run/../etc/x", "`..`"),
            ("/usr/x", "/", "root"),
            ("/usr/x", "/proc/x", "/proc"),
            ("/usr/x", "/dev/x", "/dev"),
            ("/usr/x", "/srv/repo/bin/x", "workspace"),
            ("/usr/x", "/srv", "workspace"),
            ("/var/lib/agentd/s1/upper", "/run/x", "state dir"),
        ] {
            let err = with_bind(src, dst).validate().unwrap_err().to_string();
            assert!(err.contains(why), "{src}:{dst}: {err}");
            assert!(err.contains(&format!("{src}:{dst}")), "{err}");
        }
    }

    #[test]
    fn read_only_binds_follow_the_overlay_and_create_only_on_own_tmpfs() {
        let mut p = with_bind("/usr/lib/agentd/shim", "/run/agentd/bin/shim");
        p.bind_ro.push(BindRo {
            source: PathBuf::from("/opt/tools"),
            target: PathBuf::from("/opt/tools"),
        });
        let got: Vec<String> = p.mount_steps().iter().map(|s| s.to_string()).collect();
        let r = "/var/lib/agentd/s1/rootfs";
        let overlay = got.iter().position(|s| s.starts_with("overlay")).unwrap();
        assert_eq!(
            got[overlay + 1],
            format!("bind-ro /usr/lib/agentd/shim {r}/run/agentd/bin/shim create")
        );
        assert_eq!(
            got[overlay + 2],
            format!("bind-ro /opt/tools {r}/opt/tools")
        );
        assert!(got[overlay + 3].starts_with("proc "));
        let l = p.effective_landlock();
        assert_eq!(l.rules.len(), p.landlock.rules.len() + 2);
        assert!(
            l.rules
                .iter()
                .any(|r| r.path == Path::new("/run/agentd/bin/shim")
                    && r.access == FsAccess::ReadExec
                    && !r.optional)
        );
    }

    #[test]
    fn a_plan_without_binds_still_parses() {
        let mut v = serde_json::to_value(plan()).unwrap();
        v.as_object_mut().unwrap().remove("bind_ro");
        assert!(
            serde_json::from_value::<SessionPlan>(v)
                .unwrap()
                .bind_ro
                .is_empty()
        );
    }

    #[test]
    fn plan_round_trips_through_json() {
        let p = plan();
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SessionPlan>(&s).unwrap(), p);
    }

    /// Golden: the whole ordered step list of the default plan.
    #[test]
    fn mount_steps_golden() {
        let got: Vec<String> = plan().mount_steps().iter().map(|s| s.to_string()).collect();
        let r = "/var/lib/agentd/s1/rootfs";
        let mut want = vec![
            "make-rprivate /".to_owned(),
            format!("rbind / {r}"),
            format!("read-only -R {r}"),
            format!("bind /var/lib/agentd/s1/layer/tmp {r}/tmp"),
            format!("tmpfs {r}/run mode=755 size=67108864"),
            format!("bind /var/lib/agentd/s1/layer/home {r}/home"),
            format!("mkdir -p {r}/home/agent mode=700 owner=1000"),
            format!("mask {r}/var/lib/agentd/s1"),
            format!("mkdir -p {r}/srv/repo mode=755"),
            format!(
                "overlay {r}/srv/repo lower=/srv/repo upper=/var/lib/agentd/s1/layer/upper work=/var/lib/agentd/s1/layer/work"
            ),
            format!("proc {r}/proc"),
            format!("tmpfs {r}/dev mode=755 size=65536"),
        ];
        for n in DEV_NODES {
            want.push(format!("bind-file /dev/{n} {r}/dev/{n}"));
        }
        want.extend([
            format!("symlink {r}/dev/fd -> /proc/self/fd"),
            format!("symlink {r}/dev/stdin -> /proc/self/fd/0"),
            format!("symlink {r}/dev/stdout -> /proc/self/fd/1"),
            format!("symlink {r}/dev/stderr -> /proc/self/fd/2"),
            format!("symlink {r}/dev/ptmx -> pts/ptmx"),
            format!("devpts {r}/dev/pts"),
            format!("mkdir -p {r}/dev/shm mode=1777"),
            format!("tmpfs {r}/dev/shm mode=1777 size=67108864"),
        ]);
        for m in OCI_MASKED {
            want.push(format!("mask {r}{m}"));
        }
        for m in OCI_READ_ONLY {
            want.push(format!("read-only {r}{m}"));
        }
        want.push(format!("pivot_root {r}"));
        assert_eq!(got, want);
    }

    #[test]
    fn proc_is_mounted_before_its_masks_and_pivot_is_last() {
        let steps = plan().mount_steps();
        let pos = |pred: &dyn Fn(&Step) -> bool| steps.iter().position(pred).unwrap();
        let proc_at = pos(&|s| matches!(s, Step::Proc { .. }));
        let first_mask =
            pos(&|s| matches!(s, Step::Mask { target } if target.ends_with("proc/acpi")));
        let overlay = pos(&|s| matches!(s, Step::Overlay { .. }));
        let tmp = pos(&|s| matches!(s, Step::Bind { target, .. } if target.ends_with("tmp")));
        assert!(tmp < overlay && overlay < proc_at && proc_at < first_mask);
        assert!(matches!(steps.last(), Some(Step::PivotRoot { .. })));
        assert!(matches!(steps.first(), Some(Step::MakePrivate)));
    }
}
