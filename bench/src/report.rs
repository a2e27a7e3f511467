//! The report every benchmark produces: the machine it ran on, then one section per
//! benchmark (tables, target verdicts, notes, raw figures), written as JSON and as markdown.
//! One shape for every benchmark, so the markdown renderer and the JSON stay in step.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Where and how the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The host's CPU model (passed in by xtask; the guest sees QEMU's model).
    pub host_cpu: String,
    /// Inside the VM: the guest's kernel release.
    pub kernel: String,
    /// `TCG` or `KVM` (passed in by xtask), or `none` when not in a VM.
    pub accelerator: String,
    pub cpus: usize,
    pub memory_mib: u64,
    /// The cargo profile of the measured binaries.
    pub build_profile: String,
    /// UTC, RFC 3339-ish (from `date -u`).
    pub date: String,
    pub quick: bool,
}

/// One benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Short name (`calls`, `lifecycle`, `replay`, `footprint`).
    pub name: String,
    pub title: String,
    pub tables: Vec<Table>,
    /// Target verdicts: what was asked, what was measured, met or not.
    pub targets: Vec<Target>,
    /// Method and caveats, one sentence each.
    pub notes: Vec<String>,
    /// Files written next to the report (plots), relative to it.
    pub files: Vec<String>,
    /// Raw figures for machines.
    pub data: serde_json::Value,
    /// How long the benchmark took, seconds.
    pub elapsed_s: f64,
}

/// A table: a caption, a header row and rows of preformatted cells.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, headers: &[&str]) -> Table {
        Table {
            caption: caption.into(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The row of a variant that produced no samples: its name, why, n = 0, and a dash in
    /// every figure column.
    pub fn not_run(&mut self, name: &str, what: &str, why: &str) {
        let mut cells = vec![
            format!("`{name}`"),
            format!("{what} — did not run: {why}"),
            "0".into(),
        ];
        cells.resize(self.headers.len().max(cells.len()), "–".into());
        self.rows.push(cells);
    }
}

/// A target from issue 7 and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: String,
    /// `None` when the figure could not be measured (said in `measured`).
    pub met: Option<bool>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub sections: Vec<Section>,
    pub total_s: f64,
}

impl Report {
    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        let p = dir.join("report.json");
        std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
        let p = dir.join("report.md");
        std::fs::write(&p, self.markdown()).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    /// The markdown rendering (section headings at level 2).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Measured {} on {} ({} accelerator), guest kernel {}, {} vCPUs, {} MiB, {} build{}; \
             whole run {:.0} s.\n",
            m.date,
            m.host_cpu,
            m.accelerator,
            m.kernel,
            m.cpus,
            m.memory_mib,
            m.build_profile,
            if m.quick { ", --quick" } else { "" },
            self.total_s
        );
        for sec in &self.sections {
            let _ = writeln!(
                s,
                "## {} (`{}`, {:.0} s)\n",
                sec.title, sec.name, sec.elapsed_s
            );
            if !sec.targets.is_empty() {
                let _ = writeln!(s, "| target | goal | measured | met |\n|---|---|---|---|");
                for t in &sec.targets {
                    let met = match t.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "not measured",
                    };
                    let _ = writeln!(s, "| {} | {} | {} | {met} |", t.what, t.goal, t.measured);
                }
                s.push('\n');
            }
            for t in &sec.tables {
                if !t.caption.is_empty() {
                    let _ = writeln!(s, "{}\n", t.caption);
                }
                let _ = writeln!(s, "| {} |", t.headers.join(" | "));
                let _ = writeln!(s, "|{}", "---|".repeat(t.headers.len()));
                for r in &t.rows {
                    let _ = writeln!(s, "| {} |", r.join(" | "));
                }
                s.push('\n');
            }
            for f in &sec.files {
                if f.ends_with(".svg") {
                    let _ = writeln!(s, "![{}]({f})\n", sec.title);
                }
            }
            for n in &sec.notes {
                let _ = writeln!(s, "- {n}");
            }
            if !sec.notes.is_empty() {
                s.push('\n');
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_that_did_not_run_fills_every_figure_column_with_a_dash() {
        let mut t = Table::new("c", &["variant", "what", "n", "median", "p95"]);
        t.not_run("bwrap", "a new bwrap", "not installed");
        assert_eq!(
            t.rows[0],
            vec![
                "`bwrap`",
                "a new bwrap — did not run: not installed",
                "0",
                "–",
                "–"
            ]
        );
    }

    #[test]
    fn markdown_has_machine_tables_targets_and_notes() {
        let mut t = Table::new("caption", &["a", "b"]);
        t.row(vec!["1".into(), "2".into()]);
        let r = Report {
            machine: Machine {
                host_cpu: "cpu".into(),
                kernel: "7.3".into(),
                accelerator: "TCG".into(),
                cpus: 2,
                memory_mib: 2048,
                build_profile: "release".into(),
                date: "today".into(),
                quick: true,
            },
            sections: vec![Section {
                name: "calls".into(),
                title: "Tool calls".into(),
                tables: vec![t],
                targets: vec![Target {
                    what: "api vs bwrap".into(),
                    goal: ">= 5x".into(),
                    measured: "6x".into(),
                    met: Some(true),
                }],
                notes: vec!["a note".into()],
                files: vec!["plot.svg".into()],
                data: serde_json::Value::Null,
                elapsed_s: 1.0,
            }],
            total_s: 2.0,
        };
        let md = r.markdown();
        assert!(md.contains("TCG accelerator"), "{md}");
        assert!(md.contains("## Tool calls (`calls`, 1 s)"), "{md}");
        assert!(md.contains("| a | b |\n|---|---|\n| 1 | 2 |"), "{md}");
        assert!(md.contains("| api vs bwrap | >= 5x | 6x | yes |"), "{md}");
        assert!(md.contains("![Tool calls](plot.svg)"), "{md}");
        assert!(md.contains("- a note"), "{md}");
    }
}
