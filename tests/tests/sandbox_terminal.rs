//! The caller's terminal stays out of the sandbox (issue 18, the CVE-2017-5226 pattern):
//! `agentd-sandbox run` and `exec` started from a terminal that is their controlling
//! terminal. The agent must not get it as its controlling terminal (`/dev/tty` is ENXIO,
//! no foreground process group), TIOCSTI into it is refused, and the seccomp filter refuses
//! TIOCSTI/TIOCLINUX even on a pty the agent made its own controlling terminal (where the
//! kernel alone would allow it), with the request's high 32 bits set too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod sandbox_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use sandbox_common::*;

/// What the agent reports, one `name=result` per line.
const PROBE: &str = r#"
import errno, fcntl, os, termios
def res(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print("devtty=" + res(lambda: os.close(os.open("/dev/tty", os.O_RDWR))))
print("pgrp=" + res(lambda: os.tcgetpgrp(0)))
print("sti_caller=" + res(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x")))
m, s = os.openpty()
print("own_ctty=" + res(lambda: fcntl.ioctl(s, termios.TIOCSCTTY, 0)))
print("sti_own=" + res(lambda: fcntl.ioctl(s, termios.TIOCSTI, b"y")))
print("sti_own_high=" + res(lambda: fcntl.ioctl(s, termios.TIOCSTI | (1 << 32), b"z")))
print("linux_own=" + res(lambda: fcntl.ioctl(s, 0x541C, b"\x00")))
print("probe-done")
"#;

fn on_terminal(cmd: Command) -> (String, i32) {
    let (out, st) = agentd_tests::pty::run_on_terminal(cmd);
    (
        String::from_utf8_lossy(&out).into_owned(),
        st.code().unwrap_or(-1),
    )
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {out:?}"))
}

fn assert_terminal_kept_out(out: &str) {
    assert!(out.contains("probe-done"), "{out}");
    // No controlling terminal inside: the caller's terminal is not reachable as /dev/tty.
    assert_eq!(field(out, "devtty"), "ENXIO", "{out}");
    assert_eq!(field(out, "pgrp"), "ENOTTY", "{out}");
    // Input injection into the caller's terminal is refused.
    assert_eq!(field(out, "sti_caller"), "EPERM", "{out}");
    // The agent may own a pty of its own (session leader without a terminal)...
    assert_eq!(field(out, "own_ctty"), "ok", "{out}");
    // ...but the filter refuses TIOCSTI/TIOCLINUX there too, high bits or not.
    assert_eq!(field(out, "sti_own"), "EPERM", "{out}");
    assert_eq!(field(out, "sti_own_high"), "EPERM", "{out}");
    assert_eq!(field(out, "linux_own"), "EPERM", "{out}");
}

#[test]
#[ignore = "needs the agentd test VM: run `cargo xtask vm-test`"]
fn sandbox_run_and_exec_keep_the_callers_terminal_out() {
    let _vm = agentd_tests::vm::enter();
    let f = fixture();
    // `run` from a terminal.
    let mut run = Command::new(agentd_tests::project_binary("agentd-sandbox"));
    run.arg("run")
        .arg("--workspace")
        .arg(&f.repo)
        .arg("--state")
        .arg(&f.state)
        .arg("--keep-state")
        .args(["--", "python3", "-c", PROBE]);
    let (out, code) = on_terminal(run);
    assert_eq!(code, 0, "{out}");
    assert_terminal_kept_out(&out);
    destroy(&f);

    // `exec` (no --pty) into a running session, from a terminal.
    let mut keep = sandbox_cmd(&f, &["--keep-state"], "sleep 600");
    let mut session = keep.stdin(Stdio::null()).spawn().unwrap();
    agentd_tests::wait_for_path(
        &f.state.join("session.json"),
        Duration::from_secs(60),
        "session did not start",
    );
    let mut exec = Command::new(agentd_tests::project_binary("agentd-sandbox"));
    exec.arg("exec")
        .arg("--state")
        .arg(&f.state)
        .args(["--", "python3", "-c", PROBE]);
    let (out, code) = on_terminal(exec);
    assert_eq!(code, 0, "{out}");
    assert_terminal_kept_out(&out);
    // SIGTERM, which the runtime forwards: the session ends with its agent. (A SIGKILL of
    // the runtime left the container's init and `sleep` running, and the later teardown
    // test found them.)
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(session.id() as i32, libc::SIGTERM) };
    let st = session.wait().unwrap();
    assert!(!st.success(), "{st}");
    destroy(&f);
}
