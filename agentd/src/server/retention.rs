//! A session's checkpoint retention (`[undo]` of its policy: `checkpoint`, `keep`,
//! `retention`; docs/undo.md): whether a checkpoint is taken before each tool call, and
//! which checkpoints a new one prunes. The choice is pure (unit-tested); the store does the
//! pruning (`undo::save`).

use super::Daemon;

/// Checkpoints kept per session by default (besides checkpoint 0, the session's start);
/// older ones are pruned and their objects swept. `undo.keep` and `undo.retention` of the
/// policy change it per session.
pub const RETAIN: usize = 1000;

/// A session's `[undo]` as the daemon applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A checkpoint before every tool call.
    pub per_call: bool,
    /// Checkpoints kept besides checkpoint 0.
    pub keep: usize,
    /// Seconds a checkpoint is kept (checkpoint 0 and the newest always are).
    pub max_age_s: Option<u64>,
}

impl Retention {
    /// From the session's resolved plan (None: the defaults).
    pub fn of(u: Option<&agentd_policy::UndoPlan>) -> Retention {
        Retention {
            per_call: u.is_none_or(|u| u.per_call),
            keep: u
                .and_then(|u| u.keep)
                .map_or(RETAIN, |k| usize::try_from(k).unwrap_or(RETAIN)),
            max_age_s: u.and_then(|u| u.retention_s),
        }
    }

    /// From a session's journalled plan (sessions that ended or are not adopted).
    pub fn of_journal(d: &Daemon, id: &str) -> Retention {
        let undo = d
            .journal(|j| j.plan(id))
            .ok()
            .flatten()
            .and_then(|row| row.plan.get("session")?.get("undo").cloned())
            .and_then(|v| serde_json::from_value::<agentd_policy::UndoPlan>(v).ok());
        Retention::of(undo.as_ref())
    }

    /// The phrase a pruned checkpoint's error gives.
    pub fn describe(&self) -> String {
        match self.max_age_s {
            Some(s) => format!(
                "retention keeps the last {} and none older than {s} s",
                self.keep
            ),
            None => format!("retention keeps the last {}", self.keep),
        }
    }

    /// Which of `cps` (id, saved at, seconds since the epoch; ascending ids) to prune at
    /// `now`: beyond the newest `keep` besides 0, or older than the age limit; never 0 nor
    /// the newest.
    pub fn to_prune(&self, cps: &[(u64, u64)], now: u64) -> Vec<u64> {
        let rest: Vec<&(u64, u64)> = cps.iter().filter(|(id, _)| *id != 0).collect();
        let Some((newest, _)) = rest.last().copied() else {
            return Vec::new();
        };
        let excess = rest.len().saturating_sub(self.keep);
        rest.iter()
            .enumerate()
            .filter(|(i, (id, at))| {
                id != newest
                    && (*i < excess || self.max_age_s.is_some_and(|a| at.saturating_add(a) < now))
            })
            .map(|(_, (id, _))| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(keep: usize, age: Option<u64>) -> Retention {
        Retention {
            per_call: true,
            keep,
            max_age_s: age,
        }
    }

    #[test]
    fn the_count_keeps_the_newest_and_never_checkpoint_zero() {
        let cps: Vec<(u64, u64)> = (0..6).map(|i| (i, 100)).collect();
        assert_eq!(r(3, None).to_prune(&cps, 200), vec![1, 2]);
        assert_eq!(r(5, None).to_prune(&cps, 200), Vec::<u64>::new());
        assert_eq!(r(1, None).to_prune(&cps, 200), vec![1, 2, 3, 4]);
        assert!(r(1, None).to_prune(&[(0, 0)], 200).is_empty());
    }

    #[test]
    fn the_age_prunes_old_ones_but_never_the_newest_nor_zero() {
        let cps = [(0, 0), (1, 10), (2, 50), (3, 90), (7, 95)];
        assert_eq!(r(1000, Some(30)).to_prune(&cps, 100), vec![1, 2]);
        // All old: the newest stays.
        assert_eq!(r(1000, Some(1)).to_prune(&cps, 1000), vec![1, 2, 3]);
        // Both rules: either prunes.
        assert_eq!(r(2, Some(60)).to_prune(&cps, 100), vec![1, 2]);
        assert_eq!(r(1, Some(60)).to_prune(&cps, 100), vec![1, 2, 3]);
    }

    #[test]
    fn defaults_and_policy_values() {
        assert_eq!(Retention::of(None), r(RETAIN, None));
        let u = agentd_policy::UndoPlan {
            per_call: false,
            keep: Some(5),
            retention_s: Some(3600),
        };
        let got = Retention::of(Some(&u));
        assert!(!got.per_call);
        assert_eq!((got.keep, got.max_age_s), (5, Some(3600)));
        assert_eq!(
            got.describe(),
            "retention keeps the last 5 and none older than 3600 s"
        );
    }
}
