//! Landlock filesystem access rights as plan data: each right with the ABI that introduced
//! it and its name in plans and messages (pure data; [`crate::fsrules`] maps them to the
//! kernel's).

use std::fmt;

use serde::{Deserialize, Serialize};

/// One Landlock filesystem access right (`LANDLOCK_ACCESS_FS_*`), with the ABI that
/// introduced it. The ruleset handles (restricts) every right the plan does not mark
/// optional; a kernel whose ABI predates one of those is an error, never a silent gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsRight {
    /// Execute a file (ABI 1).
    Execute,
    /// Open a file for writing (ABI 1).
    WriteFile,
    /// Open a file for reading (ABI 1).
    ReadFile,
    /// List a directory (ABI 1).
    ReadDir,
    /// Remove a directory (ABI 1).
    RemoveDir,
    /// Remove (unlink) a file (ABI 1).
    RemoveFile,
    /// Create a character device (ABI 1).
    MakeChar,
    /// Create a directory (ABI 1).
    MakeDir,
    /// Create a regular file (ABI 1).
    MakeReg,
    /// Create a Unix socket file (ABI 1).
    MakeSock,
    /// Create a fifo (ABI 1).
    MakeFifo,
    /// Create a block device (ABI 1).
    MakeBlock,
    /// Create a symlink (ABI 1).
    MakeSym,
    /// Link or rename a file into another directory (ABI 2; without it Landlock forbids
    /// such reparenting altogether).
    Refer,
    /// Truncate a file (ABI 3).
    Truncate,
    /// ioctl on a device file (ABI 5).
    IoctlDev,
    /// Connect to a pathname Unix socket (ABI 9).
    ResolveUnix,
}

impl FsRight {
    /// Every right, in the kernel's bit order.
    pub const ALL: [FsRight; 17] = [
        FsRight::Execute,
        FsRight::WriteFile,
        FsRight::ReadFile,
        FsRight::ReadDir,
        FsRight::RemoveDir,
        FsRight::RemoveFile,
        FsRight::MakeChar,
        FsRight::MakeDir,
        FsRight::MakeReg,
        FsRight::MakeSock,
        FsRight::MakeFifo,
        FsRight::MakeBlock,
        FsRight::MakeSym,
        FsRight::Refer,
        FsRight::Truncate,
        FsRight::IoctlDev,
        FsRight::ResolveUnix,
    ];

    /// The Landlock ABI that introduced the right.
    pub fn abi(self) -> u32 {
        match self {
            FsRight::Refer => 2,
            FsRight::Truncate => 3,
            FsRight::IoctlDev => 5,
            FsRight::ResolveUnix => 9,
            _ => 1,
        }
    }

    /// The right's name in plans and messages (`resolve_unix`).
    pub fn name(self) -> &'static str {
        match self {
            FsRight::Execute => "execute",
            FsRight::WriteFile => "write_file",
            FsRight::ReadFile => "read_file",
            FsRight::ReadDir => "read_dir",
            FsRight::RemoveDir => "remove_dir",
            FsRight::RemoveFile => "remove_file",
            FsRight::MakeChar => "make_char",
            FsRight::MakeDir => "make_dir",
            FsRight::MakeReg => "make_reg",
            FsRight::MakeSock => "make_sock",
            FsRight::MakeFifo => "make_fifo",
            FsRight::MakeBlock => "make_block",
            FsRight::MakeSym => "make_sym",
            FsRight::Refer => "refer",
            FsRight::Truncate => "truncate",
            FsRight::IoctlDev => "ioctl_dev",
            FsRight::ResolveUnix => "resolve_unix",
        }
    }

    /// The right called `name`.
    pub fn from_name(name: &str) -> Option<FsRight> {
        FsRight::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for FsRight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
