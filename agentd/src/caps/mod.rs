//! The capability table of a session: dynamic grants (from approvals, or added by the
//! session's owner) on top of the static policy rules. Pure logic, no I/O: the daemon keeps
//! one [`Table`] per session behind a mutex (so every decision, consumption and revocation
//! is atomic) and journals each grant (`journal::caps`). See docs/capabilities.md.
//!
//! A grant is (subject: the session or one call; resource pattern; effect allow | ask |
//! deny; scope once | call | session; uses left; expiry; parent). Rules:
//! - precedence among matching grants: deny > ask > allow;
//! - a wildcard-everything resource is refused (`agentd_policy::capability`);
//! - delegation ([`Table::delegate`]) narrows only: resource, subject, effect, uses and
//!   expiry may only tighten the parent's;
//! - revoking a grant revokes every grant delegated from it, transitively;
//! - a `once` grant covers exactly the request it was made for (its resource is that
//!   request) and is consumed by the decision that uses it, under the table's lock.
//!
//! Submodules: `audit` (the hash chain).

pub mod audit;

use std::collections::BTreeMap;
use std::fmt;

use agentd_policy::capability::{CapError, Request, Resource};
use serde::{Deserialize, Serialize};

/// Errors of table operations, naming the grant and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    #[error("bad resource: {0}")]
    Resource(#[from] CapError),
    #[error("no grant {id} in session {session}")]
    NoGrant { session: String, id: u64 },
    #[error("grant {id} was revoked")]
    Revoked { id: u64 },
    #[error("delegation from grant {parent} must narrow it: {why}")]
    Widens { parent: u64, why: String },
    #[error("a `once` grant is for one use: uses must be 1 (got {uses})")]
    OnceUses { uses: u32 },
}

/// Who a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "call")]
pub enum Subject {
    /// Everything in the session (the agent and every call).
    Session,
    /// One tool call.
    Call(u64),
}

impl Subject {
    /// Whether a request from `call` (`None`: the agent itself) is this subject's.
    pub fn holds(self, call: Option<u64>) -> bool {
        match self {
            Subject::Session => true,
            Subject::Call(n) => call == Some(n),
        }
    }

    fn within(self, parent: Subject) -> bool {
        parent == Subject::Session || self == parent
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Session => f.write_str("session"),
            Subject::Call(n) => write!(f, "call {n}"),
        }
    }
}

/// What a grant does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    Allow,
    Ask,
    Deny,
}

impl Effect {
    /// deny > ask > allow.
    fn rank(self) -> u8 {
        match self {
            Effect::Allow => 0,
            Effect::Ask => 1,
            Effect::Deny => 2,
        }
    }
}

/// How long an approval lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// This one request only (consumed by it).
    Once,
    /// The requesting call, for as long as it runs.
    Call,
    /// The whole session.
    Session,
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "once" => Ok(Scope::Once),
            "call" => Ok(Scope::Call),
            "session" => Ok(Scope::Session),
            _ => Err(format!("scope `{s}`: use once, call or session")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Once => "once",
            Scope::Call => "call",
            Scope::Session => "session",
        })
    }
}

/// One grant, as journaled and shown (`GET /v1/sessions/{id}/grants`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: u64,
    pub session: String,
    pub subject: Subject,
    /// The resource pattern (canonical text).
    pub resource: String,
    pub effect: Effect,
    pub scope: Scope,
    /// Uses left (`None`: unlimited).
    pub uses: Option<u32>,
    /// Unix ms after which the grant no longer applies.
    pub expires_at_ms: Option<u64>,
    /// The grant this one was delegated from.
    pub parent: Option<u64>,
    /// Why it exists: `approval 7 by uid 1000`, `added by uid 0`, …
    pub origin: String,
    pub created_at_ms: u64,
    #[serde(default)]
    pub revoked: bool,
}

/// What the caller wants a new grant to be ([`Table::add`], [`Table::delegate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    pub subject: Subject,
    pub resource: String,
    pub effect: Effect,
    pub scope: Scope,
    pub uses: Option<u32>,
    pub expires_at_ms: Option<u64>,
    pub origin: String,
}

impl NewGrant {
    /// The grant an approval of `req` from `call` with `scope` makes: `once` covers exactly
    /// the request and is used up by it; `call` is the requesting call's (the agent itself
    /// has no call: its `call` approvals are `once`); `session` the whole session's.
    pub fn approval(req: &Request, call: Option<u64>, scope: Scope, origin: String) -> NewGrant {
        let scope = match (scope, call) {
            (Scope::Call, None) => Scope::Once,
            (s, _) => s,
        };
        let subject = match (scope, call) {
            (Scope::Session, _) | (_, None) => Subject::Session,
            (_, Some(n)) => Subject::Call(n),
        };
        NewGrant {
            subject,
            resource: req.to_string(),
            effect: Effect::Allow,
            scope,
            uses: (scope == Scope::Once).then_some(1),
            expires_at_ms: None,
            origin,
        }
    }
}

/// The table's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub effect: Effect,
    /// The grant that decided (consumed by this decision when it had uses).
    pub grant: u64,
}

/// A session's grants. Parsed patterns are cached next to each grant.
#[derive(Debug, Default)]
pub struct Table {
    grants: BTreeMap<u64, (Grant, Option<Resource>)>,
    next: u64,
}

impl Table {
    /// A table holding `grants` (re-adoption: the journal's rows).
    pub fn from_rows(rows: Vec<Grant>) -> Table {
        let mut t = Table::default();
        for g in rows {
            t.next = t.next.max(g.id);
            let r = Resource::parse(&g.resource).ok();
            t.grants.insert(g.id, (g, r));
        }
        t
    }

    /// Every grant, revoked ones included, by id.
    pub fn list(&self) -> Vec<Grant> {
        self.grants.values().map(|(g, _)| g.clone()).collect()
    }

    pub fn get(&self, id: u64) -> Option<&Grant> {
        self.grants.get(&id).map(|(g, _)| g)
    }

    fn check(n: &NewGrant) -> Result<Resource, CapsError> {
        if n.scope == Scope::Once && n.uses != Some(1) {
            return Err(CapsError::OnceUses {
                uses: n.uses.unwrap_or(0),
            });
        }
        Ok(Resource::parse(&n.resource)?)
    }

    /// Adds a grant (no parent); returns it.
    pub fn add(&mut self, session: &str, n: NewGrant, now_ms: u64) -> Result<Grant, CapsError> {
        let r = Self::check(&n)?;
        Ok(self.insert(session, n, None, r, now_ms))
    }

    fn insert(
        &mut self,
        session: &str,
        n: NewGrant,
        parent: Option<u64>,
        r: Resource,
        now_ms: u64,
    ) -> Grant {
        self.next += 1;
        let g = Grant {
            id: self.next,
            session: session.to_string(),
            subject: n.subject,
            resource: r.to_string(),
            effect: n.effect,
            scope: n.scope,
            uses: n.uses,
            expires_at_ms: n.expires_at_ms,
            parent,
            origin: n.origin,
            created_at_ms: now_ms,
            revoked: false,
        };
        self.grants.insert(g.id, (g.clone(), Some(r)));
        g
    }

    /// Delegates from grant `parent`: the new grant may only narrow it (resource covered,
    /// subject within, effect not looser, uses and expiry not beyond the parent's).
    pub fn delegate(
        &mut self,
        session: &str,
        parent: u64,
        n: NewGrant,
        now_ms: u64,
    ) -> Result<Grant, CapsError> {
        let r = Self::check(&n)?;
        let (p, pr) = self.grants.get(&parent).ok_or_else(|| CapsError::NoGrant {
            session: session.to_string(),
            id: parent,
        })?;
        if p.revoked {
            return Err(CapsError::Revoked { id: parent });
        }
        let widens = |why: String| CapsError::Widens { parent, why };
        if !pr.as_ref().is_some_and(|pr| r.narrows(pr)) {
            return Err(widens(format!("{} is not within {}", r, p.resource)));
        }
        if !n.subject.within(p.subject) {
            return Err(widens(format!("{} is not within {}", n.subject, p.subject)));
        }
        // An allow may be delegated as allow, ask or deny; a deny only as deny.
        if n.effect.rank() < p.effect.rank() {
            return Err(widens(format!(
                "effect {:?} is looser than {:?}",
                n.effect, p.effect
            )));
        }
        if n.scope > p.scope {
            return Err(widens(format!(
                "scope {} is wider than {}",
                n.scope, p.scope
            )));
        }
        if let Some(pu) = p.uses
            && n.uses.is_none_or(|u| u > pu)
        {
            return Err(widens(format!("uses beyond the parent's {pu}")));
        }
        if let Some(pe) = p.expires_at_ms
            && n.expires_at_ms.is_none_or(|e| e > pe)
        {
            return Err(widens("expiry beyond the parent's".into()));
        }
        Ok(self.insert(session, n, Some(parent), r, now_ms))
    }

    /// Revokes grant `id` and every grant delegated from it (transitively); returns the
    /// ids revoked now.
    pub fn revoke(&mut self, session: &str, id: u64) -> Result<Vec<u64>, CapsError> {
        if !self.grants.contains_key(&id) {
            return Err(CapsError::NoGrant {
                session: session.to_string(),
                id,
            });
        }
        let mut todo = vec![id];
        let mut done = Vec::new();
        while let Some(x) = todo.pop() {
            if let Some((g, _)) = self.grants.get_mut(&x)
                && !g.revoked
            {
                g.revoked = true;
                done.push(x);
            }
            todo.extend(
                self.grants
                    .values()
                    .filter(|(g, _)| g.parent == Some(x) && !g.revoked)
                    .map(|(g, _)| g.id),
            );
        }
        done.sort_unstable();
        Ok(done)
    }

    /// Revokes every `call`-subject grant of call `n` (the call ended).
    pub fn end_call(&mut self, n: u64) -> Vec<u64> {
        let ids: Vec<u64> = self
            .grants
            .values()
            .filter(|(g, _)| g.subject == Subject::Call(n) && !g.revoked)
            .map(|(g, _)| g.id)
            .collect();
        for id in &ids {
            if let Some((g, _)) = self.grants.get_mut(id) {
                g.revoked = true;
            }
        }
        ids
    }

    fn live(g: &Grant, now_ms: u64) -> bool {
        !g.revoked && g.uses != Some(0) && g.expires_at_ms.is_none_or(|e| now_ms < e)
    }

    /// Decides `req` from `call` (`None`: the agent itself): among the live grants whose
    /// subject holds the caller and whose resource covers the request, the strongest effect
    /// wins (deny > ask > allow; among equals the oldest grant). A winning allow with uses
    /// is consumed here. `None`: no grant applies (the policy decides).
    pub fn decide(&mut self, call: Option<u64>, req: &Request, now_ms: u64) -> Option<Decision> {
        let best = self
            .grants
            .values()
            .filter(|(g, r)| {
                Self::live(g, now_ms)
                    && g.subject.holds(call)
                    && r.as_ref().is_some_and(|r| r.covers(req))
            })
            .map(|(g, _)| (g.effect, g.id))
            .max_by_key(|(e, id)| (e.rank(), std::cmp::Reverse(*id)))?;
        let (effect, id) = best;
        if effect == Effect::Allow
            && let Some((g, _)) = self.grants.get_mut(&id)
            && let Some(u) = g.uses.as_mut()
        {
            *u = u.saturating_sub(1);
        }
        Some(Decision { effect, grant: id })
    }
}

#[cfg(test)]
mod tests;
