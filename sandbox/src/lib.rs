//! agentd session containers.
//!
//! This crate will own everything that turns a session plan into a running container:
//! user/mount/pid/net/ipc/uts/cgroup namespaces, the root (host root read-only or an OCI
//! bundle), the overlay workspace on a size-capped backing store, pivot_root, seccomp,
//! Landlock, capability drop, rlimits, exec into a running session, and teardown.
//!
//! Nothing is implemented yet (see the Sandbox issue); the crate exists so the workspace has
//! its final shape.
