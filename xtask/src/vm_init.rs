//! `xtask vm-init`: PID 1 of the test VM after switch_root. Runs the payload, reaps every
//! process reparented to it (so tests that check for leftover processes see no zombies),
//! reports the payload's status on the sentinel line, kills what is left and powers off.

use std::process::Command;

use crate::initramfs::EXIT_SENTINEL;

/// Never returns: the VM powers off.
pub fn run(argv: &[String]) -> ! {
    let status = match argv.split_first() {
        Some((prog, args)) => match Command::new(prog).args(args).spawn() {
            Ok(child) => reap_until(child.id() as libc::pid_t),
            Err(e) => {
                println!("agentd-vm: cannot start {prog}: {e}");
                127
            }
        },
        None => 127,
    };
    println!("{EXIT_SENTINEL}{status}");
    // SAFETY: sync, kill and reboot take no pointers; as PID 1 we own the whole VM.
    unsafe {
        libc::sync();
        libc::kill(-1, libc::SIGKILL);
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(status)
}

/// Reaps any child until `main` exits; returns its exit code (128 + signal when killed).
fn reap_until(main: libc::pid_t) -> i32 {
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
        if pid < 0 {
            return 126;
        }
        if pid == main {
            if libc::WIFEXITED(st) {
                return libc::WEXITSTATUS(st);
            }
            return 128 + libc::WTERMSIG(st);
        }
    }
}
