//! Benchmark 5, egress (issue 13): connect latency and single-stream throughput through the
//! daemon's egress proxy against the same client connecting directly, in the same VM run.
//! An upstream network namespace behind a veth pair runs `agentd-bench egress-server` (a
//! TCP server that answers one byte per connection, or streams N bytes, plus a DNS server
//! for `bench.test`); the direct client runs in the VM's root namespace, the proxied one as
//! a tool call inside a session whose policy allows `bench.test:9000` (transparent capture:
//! fake-IP DNS, the daemon resolves, decides, connects and relays).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::fixture::{Daemon, Scratch, bin, run_quiet};
use crate::report::{Section, Table, Target};
use crate::stats::{Summary, ms, ratio, x};

const NS: &str = "agentd-bench-up";
const UP: &str = "10.78.0.2";
const PORT: u16 = 9000;

/// The upstream server (runs inside the upstream namespace): TCP on `addr:9000` — a client
/// sends `c` (one byte back, then close) or `s<u64 bytes>` (that many bytes back) — and DNS
/// on `addr:53` answering `bench.test` with `addr`.
pub fn server(addr: &str) -> Result<()> {
    let dns = UdpSocket::bind((addr, 53)).context("bind dns")?;
    let ip: std::net::Ipv4Addr = addr.parse()?;
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok((n, peer)) = dns.recv_from(&mut b) {
            let Ok(q) = agentd::egress::dns::parse_query(&b[..n]) else {
                continue;
            };
            let a = if q.name == "bench.test" && q.qtype == agentd::egress::dns::TYPE_A {
                agentd::egress::dns::Answer::A(ip)
            } else {
                agentd::egress::dns::Answer::Empty
            };
            let _ = dns.send_to(&agentd::egress::dns::answer(&q, a), peer);
        }
    });
    let l = TcpListener::bind((addr, PORT)).context("bind tcp")?;
    println!("ready");
    std::io::stdout().flush()?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut cmd = [0u8; 9];
            if s.read_exact(&mut cmd[..1]).is_err() {
                return;
            }
            if cmd[0] == b'c' {
                let _ = s.write_all(b"k");
                return;
            }
            if s.read_exact(&mut cmd[1..]).is_err() {
                return;
            }
            let mut left = u64::from_be_bytes(cmd[1..9].try_into().unwrap_or([0; 8]));
            let chunk = vec![0x5au8; 64 * 1024];
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if s.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
    Ok(())
}

/// The client: `n` connects (connect + one byte back, ms each), then one stream of `bytes`
/// (MiB/s); prints JSON.
pub fn client(host: &str, n: usize, bytes: u64) -> Result<()> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, PORT))?
        .next()
        .context("no address")?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.write_all(b"c")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    let mut cmd = vec![b's'];
    cmd.extend_from_slice(&bytes.to_be_bytes());
    let t = Instant::now();
    s.write_all(&cmd)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let k = s.read(&mut buf)?;
        if k == 0 {
            bail!("stream ended after {got} of {bytes} bytes");
        }
        got += k as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({ "connect_ms": lat, "mib_s": bytes as f64 / 1048576.0 / secs })
    );
    Ok(())
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
        let _ = Command::new("ip")
            .args(["link", "del", "veth-bnh"])
            .status();
    }
}

fn upstream() -> Result<Upstream> {
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    let _ = Command::new("ip")
        .args(["link", "del", "veth-bnh"])
        .status();
    for args in [
        vec!["netns", "add", NS],
        vec![
            "link", "add", "veth-bnh", "type", "veth", "peer", "name", "veth-bnu",
        ],
        vec!["link", "set", "veth-bnu", "netns", NS],
        vec!["addr", "add", "10.78.0.1/24", "dev", "veth-bnh"],
        vec!["link", "set", "veth-bnh", "up"],
        vec!["-n", NS, "addr", "add", "10.78.0.2/24", "dev", "veth-bnu"],
        vec!["-n", NS, "link", "set", "veth-bnu", "up"],
        vec!["-n", NS, "link", "set", "lo", "up"],
    ] {
        run_quiet(Command::new("ip").args(&args))?;
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", NS])
        .arg(bin("agentd-bench")?)
        .args(["egress-server", "--addr", UP])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the upstream server")?;
    let mut line = String::new();
    let out = child.stdout.take().context("no stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    if line.trim() != "ready" {
        bail!("the upstream server did not start: {line:?}");
    }
    Ok(Upstream(child))
}

fn parse(out: &str) -> Result<(Vec<f64>, f64)> {
    let v: serde_json::Value = serde_json::from_str(
        out.lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("no JSON from the client")?,
    )?;
    let lat = v["connect_ms"]
        .as_array()
        .context("connect_ms")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok((lat, v["mib_s"].as_f64().context("mib_s")?))
}

/// A profiling aid (not part of the report): `AGENTD_BENCH_EGRESS_PROFILE=strace` counts the
/// daemon's system calls, `=perf` samples its CPU (`perf record -g`), over one proxied run
/// of 200 connects and a 64 MiB stream; the summary goes to stderr.
fn profile(d: &Daemon, id: &str, bench: &str, how: &str) -> Result<()> {
    let pid = d.pid().context("no daemon pid")?.to_string();
    let out = "/tmp/agentd-bench-egress-profile";
    let mut tool = match how {
        "strace" => Command::new("strace")
            .args(["-c", "-f", "-o", out, "-p", &pid])
            .spawn()?,
        "perf" => Command::new("perf")
            .args(["record", "-g", "-e", "cpu-clock", "-o", out, "-p", &pid])
            .spawn()?,
        other => bail!("AGENTD_BENCH_EGRESS_PROFILE={other}: strace or perf"),
    };
    std::thread::sleep(Duration::from_secs(2));
    let bytes = (64u64 << 20).to_string();
    let c = d.call(
        id,
        &[
            bench,
            "egress-client",
            "--host",
            "bench.test",
            "--n",
            "200",
            "--bytes",
            &bytes,
        ],
    )?;
    eprintln!("profiled run: {}", c.stdout.as_deref().unwrap_or(""));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(tool.id() as i32, libc::SIGINT) };
    let _ = tool.wait();
    let report = if how == "perf" {
        Command::new("perf")
            .args([
                "report",
                "-i",
                out,
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.7",
            ])
            .output()?
            .stdout
    } else {
        std::fs::read(out)?
    };
    eprintln!("{}", String::from_utf8_lossy(&report));
    Ok(())
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let (n, bytes) = if quick {
        (30, 16u64 << 20)
    } else {
        (200, 128u64 << 20)
    };
    let _up = upstream()?;
    // The daemon resolves upstream names through the upstream's DNS (inherited).
    // SAFETY: set before the daemon starts, while this process has no other threads using env.
    unsafe { std::env::set_var("AGENTD_EGRESS_DNS", format!("{UP}:53")) };
    let scratch = Scratch::new("agentd-bench-egress-")?;
    let cg = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/agentd-bench-egress-{}",
        std::process::id()
    ));
    let d = Daemon::start(&scratch, &cg)?;
    // The built-in host caps let a repo allow only the registry sets: this host lists the
    // bench upstream (the daemon reads the host file at each session start).
    std::fs::write(
        scratch.path().join("host.toml"),
        format!(
            "version = 1\n[network.max]\nenabled = true\nallow = [\"bench.test:{PORT}\", \"{UP}/32:{PORT}\"]\n"
        ),
    )?;
    let policy = format!(
        "version = 1\n[network]\nenabled = true\nallow = [\"bench.test:{PORT}\", \"{UP}/32:{PORT}\"]\n"
    );
    let s = d.session_with_policy(&scratch.repo(), &policy, &["sleep".into(), "86400".into()])?;
    let bench = bin("agentd-bench")?;
    let bench = bench.to_str().context("path")?;
    let (n_s, b_s) = (n.to_string(), bytes.to_string());
    // Alternate direct and proxied runs twice, so that drift on the shared host hits both.
    let mut direct = (Vec::new(), Vec::new());
    let mut proxied = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let out = Command::new(bench)
            .args(["egress-client", "--host", UP, "--n", &n_s, "--bytes", &b_s])
            .output()?;
        if !out.status.success() {
            bail!("direct client: {}", String::from_utf8_lossy(&out.stderr));
        }
        let (l, t) = parse(&String::from_utf8_lossy(&out.stdout))?;
        direct.0.extend(l);
        direct.1.push(t);
        let c = d.call(
            &s.id,
            &[
                bench,
                "egress-client",
                "--host",
                "bench.test",
                "--n",
                &n_s,
                "--bytes",
                &b_s,
            ],
        )?;
        let (l, t) = parse(c.stdout.as_deref().unwrap_or(""))?;
        proxied.0.extend(l);
        proxied.1.push(t);
    }
    if let Ok(how) = std::env::var("AGENTD_BENCH_EGRESS_PROFILE") {
        profile(&d, &s.id, bench, &how)?;
    }
    let _ = d.destroy(&s.id);
    let sd = Summary::of_ms(&direct.0).context("no direct samples")?;
    let sp = Summary::of_ms(&proxied.0).context("no proxied samples")?;
    let med = |v: &[f64]| crate::stats::median(&crate::stats::sorted(v)).unwrap_or(0.0);
    let (td, tp) = (med(&direct.1), med(&proxied.1));
    let lat_ratio = ratio(sp.median_ms, sd.median_ms);
    let thr_ratio = ratio(tp, td);
    let mut t = Table::new(
        "Egress: connect (connect + 1-byte answer) and one stream, direct vs through the proxy",
        &["path", "n", "connect p50", "connect p95", "stream MiB/s"],
    );
    t.row(vec![
        "direct (VM root netns → veth)".into(),
        sd.n.to_string(),
        ms(sd.median_ms),
        ms(sd.p95_ms),
        format!("{td:.0}"),
    ]);
    t.row(vec![
        "session → egress proxy (transparent) → veth".into(),
        sp.n.to_string(),
        ms(sp.median_ms),
        ms(sp.p95_ms),
        format!("{tp:.0}"),
    ]);
    let targets = vec![
        Target {
            what: "egress connect latency (p50, proxy / direct)".into(),
            goal: "≤ 1.2x".into(),
            measured: x(lat_ratio),
            met: lat_ratio.map(|r| r <= 1.2),
        },
        Target {
            what: "egress single-stream throughput (proxy / direct)".into(),
            goal: "≥ 80%".into(),
            measured: thr_ratio.map_or("–".into(), |r| format!("{:.0}%", r * 100.0)),
            met: thr_ratio.map(|r| r >= 0.8),
        },
    ];
    Ok(Section {
        name: "egress".into(),
        title: "Egress proxy overhead".into(),
        tables: vec![t],
        targets,
        notes: vec![
            format!("{n} connects and one {} MiB stream per run, two runs per path alternated; the proxied client is a tool call in a session allowing bench.test:{PORT}.", bytes >> 20),
            "The proxied connect includes what every connection costs: the fake-IP lookup, sock_diag attribution, the policy decision, the daemon's upstream DNS (cached) and connect.".into(),
        ],
        files: Vec::new(),
        data: json!({ "direct": { "connect_ms": direct.0, "mib_s": direct.1 }, "proxied": { "connect_ms": proxied.0, "mib_s": proxied.1 } }),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
