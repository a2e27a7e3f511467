//! The egress tests' upstreams (shared by `egress.rs` and `caps.rs`): their own network
//! namespace behind a veth pair with DNS, HTTP, HTTPS (self-signed), a pip index and a git
//! repository over dumb HTTP (`upstream.py`); the daemon resolves through that DNS.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub const UP_NS: &str = "agentd-egress-up";
pub const UP_ADDR: &str = "10.77.0.2";
pub const HOST_SIDE: &str = "10.77.0.1";

pub struct Upstream {
    _child: Child,
    /// The CA (self-signed server certificate) clients trust.
    pub cert: String,
}

pub fn sh(script: &str) {
    let out = Command::new("/bin/sh")
        .arg("-ec")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The upstream namespace, its servers and their content (once per test process).
pub fn upstream() -> &'static Upstream {
    static UP: OnceLock<Upstream> = OnceLock::new();
    UP.get_or_init(|| {
        let dir = PathBuf::from("/tmp/agentd-egress-up");
        // Another test process of this VM run (egress, then caps) leaves its upstream behind:
        // its servers, namespace and veth pair live on after it exits. Start from nothing.
        sh(&format!(
            "if ip netns list | grep -qw {UP_NS}; then
               for p in $(ip netns pids {UP_NS}); do kill -9 $p 2>/dev/null || true; done
               ip netns del {UP_NS}
             fi
             ! ip link show veth-egh >/dev/null 2>&1 || ip link del veth-egh"
        ));
        let _ = fs::remove_dir_all(&dir);
        let www = dir.join("www");
        fs::create_dir_all(www.join("simple/agentdpkg")).unwrap();
        fs::create_dir_all(www.join("packages")).unwrap();
        fs::write(www.join("hello.txt"), "hello from web.test\n").unwrap();
        fs::write(www.join("big.bin"), vec![7u8; 4 << 20]).unwrap();
        fs::write(
            www.join("simple/agentdpkg/index.html"),
            "<html><body><a href=\"/packages/agentdpkg-1.0-py3-none-any.whl\">agentdpkg-1.0-py3-none-any.whl</a></body></html>\n",
        )
        .unwrap();
        let d = dir.display();
        sh(&format!(
            "cd {d}
             /usr/bin/python3 - <<'PY'
import zipfile
z = zipfile.ZipFile('www/packages/agentdpkg-1.0-py3-none-any.whl', 'w')
z.writestr('agentdpkg/__init__.py', 'VALUE = 42\\n')
z.writestr('agentdpkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: agentdpkg\\nVersion: 1.0\\n')
z.writestr('agentdpkg-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: agentd-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')
z.writestr('agentdpkg-1.0.dist-info/RECORD', 'agentdpkg/__init__.py,,\\nagentdpkg-1.0.dist-info/METADATA,,\\nagentdpkg-1.0.dist-info/WHEEL,,\\nagentdpkg-1.0.dist-info/RECORD,,\\n')
z.close()
PY
             openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=web.test \
               -addext subjectAltName=DNS:web.test,DNS:other.test,DNS:alpha.test \
               -keyout key.pem -out cert.pem 2>/dev/null
             git init -q src && cd src && echo egress > file.txt && git add file.txt
             git -c user.name=t -c user.email=t@t commit -qm one && cd ..
             git clone -q --bare src www/repo.git && cd www/repo.git && git update-server-info && cd {d}
             ip netns add {UP_NS}
             ip link add veth-egh type veth peer name veth-egu
             ip link set veth-egu netns {UP_NS}
             ip addr add {HOST_SIDE}/24 dev veth-egh && ip link set veth-egh up
             ip -n {UP_NS} addr add {UP_ADDR}/24 dev veth-egu
             ip -n {UP_NS} link set veth-egu up && ip -n {UP_NS} link set lo up"
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/egress_fixture/upstream.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", UP_NS, "/usr/bin/python3"])
            .arg(&script)
            .args([UP_ADDR, www.to_str().unwrap()])
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        // The daemon resolves upstream names there (inherited by every test daemon).
        // SAFETY: set once, before any daemon is spawned, by the fixture's initialiser.
        unsafe { std::env::set_var("AGENTD_EGRESS_DNS", format!("{UP_ADDR}:53")) };
        Upstream {
            _child: child,
            cert: fs::read_to_string(dir.join("cert.pem")).unwrap(),
        }
    })
}
