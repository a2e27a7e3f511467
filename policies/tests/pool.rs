//! `resources.priority` and the host's `[resources.pool]` (issue 14): resolved into the plan,
//! refused with file:line:column when wrong or set by the wrong layer.

mod common;

use agentd_policy::DiagnosticKind as K;
use agentd_policy::Priority;
use common::*;

const POOL_HOST: &str = "version = 1\n[resources.pool]\nenabled = true\nreserve = \"32MiB\"\n\
                         loan_step = \"8MiB\"\npressure_stall_ms = 150\n";

#[test]
fn the_pool_is_off_unless_the_host_enables_it() {
    assert!(plan("version = 1\n").pool.is_none());
    let p = load(Some(POOL_HOST), "version = 1\n", &[], &[]).unwrap();
    let pool = p.pool.expect("pool enabled by the host");
    assert_eq!(pool.reserve, Some(32 << 20));
    assert_eq!(pool.loan_step, Some(8 << 20));
    assert_eq!(pool.pressure_stall_ms, Some(150));
    assert_eq!(pool.limit, None);
    assert_eq!((pool.from.line, pool.from.column), (3, 11));
}

#[test]
fn a_repo_sets_its_priority_within_the_host_cap() {
    let p = plan("version = 1\n[resources]\npriority = \"high\"\n");
    assert_eq!(p.session.priority.map(|l| l.value), Some(Priority::High));
    let host = "version = 1\n[resources.max]\npriority = \"normal\"\n";
    let d = errors(
        Some(host),
        "version = 1\n[resources]\npriority = \"high\"\n",
    );
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::ExceedsHostCap,
        ".agentd/policy.toml:3:12",
        "`resources.priority = high` exceeds the host cap",
    );
    let p = load(
        Some(host),
        "version = 1\n[resources]\npriority = \"low\"\n",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(p.session.priority.map(|l| l.value), Some(Priority::Low));
}

#[test]
fn a_bad_priority_points_at_its_value() {
    let d = one_error("version = 1\n[resources]\npriority = \"urgent\"\n");
    assert_diag(
        &d,
        K::Parse,
        ".agentd/policy.toml:3:12",
        "unknown variant `urgent`",
    );
}

#[test]
fn the_pool_is_host_only() {
    let d = one_error("version = 1\n[resources.pool]\nenabled = true\n");
    assert_diag(
        &d,
        K::HostOnly,
        ".agentd/policy.toml:2:1",
        "`resources.pool` may only be set by the host policy",
    );
}

#[test]
fn pool_values_are_checked_where_they_are_written() {
    let host = "version = 1\n[resources.pool]\nenabled = true\npressure_stall_ms = 5000\n";
    let d = errors(Some(host), "version = 1\n");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::Invalid,
        "/etc/agentd/policy.toml:4:21",
        "outside 1 to 1000",
    );
    let host = "version = 1\n[resources.pool]\nlimit = \"64MiB\"\nreserve = \"64MiB\"\n";
    let d = errors(Some(host), "version = 1\n");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_diag(
        &d[0],
        K::Contradiction,
        "/etc/agentd/policy.toml:4:11",
        "leaves nothing of `resources.pool.limit = 64MiB`",
    );
    let d = errors(
        Some("version = 1\n[resources.pool]\nenabled = true\nsize = 1\n"),
        "version = 1\n",
    );
    assert_eq!(d[0].kind, K::Parse, "{d:#?}");
    assert_eq!((d[0].line, d[0].column), (4, 1));
}
