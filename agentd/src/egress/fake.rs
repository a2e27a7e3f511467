//! The per-session map between names and fake addresses (198.18.0.0/15) the DNS stub
//! hands out: stable (a name keeps its address for the session), bounded (`CAPACITY`;
//! beyond it the stub answers SERVFAIL rather than reuse an address another connection
//! may still mean).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::netns::{FAKE_NET, FAKE_PREFIX};

/// Names per session.
pub const CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
pub struct FakeMap {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl FakeMap {
    /// The address for `name`, allocating the next one; `None` when full.
    pub fn addr_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(a) = self.by_name.get(name) {
            return Some(*a);
        }
        let n = self.by_name.len();
        let size = 1usize << (32 - u32::from(FAKE_PREFIX));
        if n >= CAPACITY || n + 2 >= size {
            return None;
        }
        // Skip .0 of the range: start at FAKE_NET + 1.
        let a = Ipv4Addr::from(u32::from(FAKE_NET) + 1 + n as u32);
        self.by_name.insert(name.to_string(), a);
        self.by_addr.insert(a, name.to_string());
        Some(a)
    }

    /// The name a fake address stands for.
    pub fn name_of(&self, a: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&a).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_reversible() {
        let mut m = FakeMap::default();
        let a = m.addr_for("a.test").unwrap();
        let b = m.addr_for("b.test").unwrap();
        assert_ne!(a, b);
        assert_eq!(m.addr_for("a.test"), Some(a));
        assert_eq!(m.name_of(b), Some("b.test"));
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(m.name_of(Ipv4Addr::new(198, 18, 9, 9)), None);
    }
}
