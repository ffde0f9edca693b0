//! The identity graph: interned identities and union-find over their links.
//!
//! Identities are interned per `(class, namespace, value)` into dense `u32`
//! ids; links union their endpoints (union by size, path halving). Classes
//! never share an id, so a prospect never joins a customer.

use std::collections::HashMap;

use crate::config::Class;

/// One interned identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub class: Class,
    /// Index into the project's namespaces (sorted by priority, then name).
    pub ns: u16,
    pub value: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// Interned identities plus a union-find over them.
#[derive(Debug, Default)]
pub struct IdentityGraph {
    index: HashMap<(Class, u16, String), u32>,
    pub identities: Vec<Identity>,
    parent: Vec<u32>,
    size: Vec<u32>,
    /// Distinct links applied (anchor, other), counted for the run record.
    pub links: u64,
}

impl IdentityGraph {
    /// Intern an identity seen at `ts`, returning its id.
    pub fn intern(&mut self, class: Class, ns: u16, value: &str, ts: i64) -> u32 {
        if let Some(&id) = self.index.get(&(class, ns, value.to_string())) {
            let e = &mut self.identities[id as usize];
            e.first_seen = e.first_seen.min(ts);
            e.last_seen = e.last_seen.max(ts);
            return id;
        }
        let id = self.identities.len() as u32;
        self.index.insert((class, ns, value.to_string()), id);
        self.identities.push(Identity {
            class,
            ns,
            value: value.to_string(),
            first_seen: ts,
            last_seen: ts,
        });
        self.parent.push(id);
        self.size.push(1);
        id
    }

    pub fn len(&self) -> usize {
        self.identities.len()
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The root of `x`'s component.
    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Link two identities.
    pub fn union(&mut self, a: u32, b: u32) {
        self.links += 1;
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
    }

    /// The component root of every identity, by id.
    pub fn components(&mut self) -> Vec<u32> {
        (0..self.identities.len() as u32)
            .map(|i| self.find(i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_union_find_joins_components() {
        let mut g = IdentityGraph::default();
        let a = g.intern(Class::Customer, 0, "a", 1);
        let b = g.intern(Class::Customer, 1, "b", 2);
        let c = g.intern(Class::Customer, 1, "c", 3);
        let p = g.intern(Class::Prospect, 0, "a", 4);
        assert_ne!(a, p, "classes never share an identity");
        assert_eq!(g.intern(Class::Customer, 0, "a", 0), a);
        assert_eq!(g.identities[a as usize].first_seen, 0);
        g.union(a, b);
        let comps = g.components();
        assert_eq!(comps[a as usize], comps[b as usize]);
        assert_ne!(comps[a as usize], comps[c as usize]);
    }
}
