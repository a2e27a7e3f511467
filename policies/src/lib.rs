//! agentd policy files.
//!
//! This crate will own the policy schema (`.agentd/policy.toml`, profiles, host policy),
//! validation with file:line:column errors, layering, and resolution to a pure `Plan`.
//! Nothing is implemented yet (see the Policy files issue).
