//! A rule change as the maps see it: the difference between the entries
//! `FORWARDS`, `FORWARD_PORTS` and `ALLOWED_REMOTES` hold and the ones
//! they must hold, as a plain value. Computing it needs no kernel, so its
//! order and its undo are unit-tested here; [`super::MapWriter::apply`]
//! is the only code that carries one out.
use foldhash::{HashMap, HashSet};
use nat_common::{EndpointKey, Forward};

use crate::rules::{AllowEntry, RuleEntries, RuleSet};

/// One map operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    PutAllowed(AllowEntry),
    PutForward(EndpointKey, Forward),
    RemoveForward(EndpointKey),
    RemoveAllowed(AllowEntry),
}

/// The steps from one set of rule entries to another, each with the step
/// that undoes it, and the rule ids whose counters start from zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapChange {
    steps: Vec<(Step, Step)>,
    fresh_rule_ids: Vec<u32>,
}

impl MapChange {
    /// The smallest change from `current` (what the maps hold, as their only
    /// writer knows it) to `desired`. Allowed remotes go in before the
    /// forwards that need them and come out after, so a restricted port is
    /// never open to everyone, not even between two steps.
    pub fn between(current: &RuleEntries, desired: &RuleEntries) -> Self {
        let current_forwards: HashMap<EndpointKey, Forward> =
            current.forwards.iter().copied().collect();
        let desired_keys: HashSet<EndpointKey> =
            desired.forwards.iter().map(|(key, _)| *key).collect();
        let current_allowed: HashSet<AllowEntry> = current.allowed.iter().copied().collect();
        let desired_allowed: HashSet<AllowEntry> = desired.allowed.iter().copied().collect();

        let mut steps = Vec::new();
        // Walking the vectors, not the sets, keeps the order deterministic.
        for entry in dedup(&desired.allowed) {
            if !current_allowed.contains(&entry) {
                steps.push((Step::PutAllowed(entry), Step::RemoveAllowed(entry)));
            }
        }
        for &(key, value) in &desired.forwards {
            let undo = match current_forwards.get(&key) {
                Some(old) if *old == value => continue,
                Some(old) => Step::PutForward(key, *old),
                None => Step::RemoveForward(key),
            };
            steps.push((Step::PutForward(key, value), undo));
        }
        for &(key, value) in &current.forwards {
            if !desired_keys.contains(&key) {
                steps.push((Step::RemoveForward(key), Step::PutForward(key, value)));
            }
        }
        for entry in dedup(&current.allowed) {
            if !desired_allowed.contains(&entry) {
                steps.push((Step::RemoveAllowed(entry), Step::PutAllowed(entry)));
            }
        }
        Self {
            steps,
            fresh_rule_ids: Vec::new(),
        }
    }

    /// The change from one rule set to the next: the entries of the rules
    /// that differ, and the ids `next` gives to rules `current` does not
    /// have (a removed rule's id may be reused, and its counts must not
    /// carry over). A rule the same under the same id puts the same entries
    /// in, and no two rules share a key, so the rules left as they were
    /// drop out of the difference: with 1000 UPnP mappings held, a request
    /// diffs its own rule's entries, not every rule's.
    pub fn for_rules(current: &RuleSet, next: &RuleSet) -> Self {
        let mut old = RuleEntries::default();
        for (id, rule, _) in current.differing(next) {
            old.append(rule.entries(id));
        }
        let mut new = RuleEntries::default();
        let mut fresh_rule_ids = Vec::new();
        for (id, rule, known) in next.differing(current) {
            if !known {
                fresh_rule_ids.push(id);
            }
            new.append(rule.entries(id));
        }
        Self {
            fresh_rule_ids,
            ..Self::between(&old, &new)
        }
    }

    /// Also zero the counters of these rule ids.
    pub fn with_fresh_rule_ids(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        self.fresh_rule_ids.extend(ids);
        self
    }

    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps.iter().map(|(step, _)| *step)
    }

    pub fn fresh_rule_ids(&self) -> &[u32] {
        &self.fresh_rule_ids
    }

    /// The undo of the first `done` steps, latest first.
    pub fn undo_of(&self, done: usize) -> impl Iterator<Item = Step> + '_ {
        self.steps[..done.min(self.steps.len())]
            .iter()
            .rev()
            .map(|(_, undo)| *undo)
    }

    /// The change that brings the maps back: every step undone, latest
    /// first. Counters already zeroed stay zeroed.
    pub fn inverse(&self) -> Self {
        Self {
            steps: self
                .steps
                .iter()
                .rev()
                .map(|(step, undo)| (*undo, *step))
                .collect(),
            fresh_rule_ids: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.fresh_rule_ids.is_empty()
    }
}

fn dedup(entries: &[AllowEntry]) -> Vec<AllowEntry> {
    let mut seen = HashSet::default();
    entries
        .iter()
        .copied()
        .filter(|entry| seen.insert(*entry))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ForwardRule;

    fn rules(specs: &[&str]) -> RuleSet {
        let mut set = RuleSet::default();
        for spec in specs {
            let rule: ForwardRule = spec.parse().unwrap();
            set.add(rule, None).unwrap();
        }
        set
    }

    fn apply(maps: &mut RuleEntries, steps: impl Iterator<Item = Step>) {
        for step in steps {
            match step {
                Step::PutAllowed(entry) => {
                    assert!(!maps.allowed.contains(&entry), "{entry:?} twice");
                    maps.allowed.push(entry);
                }
                Step::RemoveAllowed(entry) => {
                    let at = maps.allowed.iter().position(|e| *e == entry).unwrap();
                    maps.allowed.remove(at);
                }
                Step::PutForward(key, value) => {
                    maps.forwards.retain(|(k, _)| *k != key);
                    maps.forwards.push((key, value));
                }
                Step::RemoveForward(key) => {
                    let before = maps.forwards.len();
                    maps.forwards.retain(|(k, _)| *k != key);
                    assert_eq!(maps.forwards.len() + 1, before, "{key:?} was not there");
                }
            }
        }
    }

    fn sorted(mut entries: RuleEntries) -> (Vec<String>, Vec<String>) {
        let mut forwards: Vec<String> = entries
            .forwards
            .drain(..)
            .map(|entry| format!("{entry:?}"))
            .collect();
        let mut allowed: Vec<String> = entries
            .allowed
            .drain(..)
            .map(|entry| format!("{entry:?}"))
            .collect();
        forwards.sort();
        allowed.sort();
        (forwards, allowed)
    }

    #[test]
    fn applying_a_change_reaches_the_desired_entries_and_its_inverse_comes_back() {
        let before = rules(&[
            "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,name=ssh",
            "udp/6881-6883=192.168.0.20,name=torrent",
        ]);
        let mut after = before.clone();
        after.remove("torrent").unwrap();
        after
            .add("both/8080=192.168.0.13:80".parse().unwrap(), None)
            .unwrap();
        after.get_mut("ssh").unwrap().allow = vec!["203.0.113.0/24".parse().unwrap()];

        let change = MapChange::for_rules(&before, &after);
        let mut maps = before.entries();
        apply(&mut maps, change.steps());
        assert_eq!(sorted(maps), sorted(after.entries()));

        let mut maps = before.entries();
        apply(&mut maps, change.steps());
        apply(&mut maps, change.inverse().steps());
        assert_eq!(sorted(maps), sorted(before.entries()));
    }

    #[test]
    fn a_partial_change_is_undone_exactly() {
        let before = rules(&["tcp/2222=192.168.0.12:22"]);
        let after = rules(&[
            "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24",
            "udp/5000-5009=192.168.0.30",
        ]);
        let change = MapChange::for_rules(&before, &after);
        for done in 0..=change.steps().count() {
            let mut maps = before.entries();
            apply(&mut maps, change.steps().take(done));
            apply(&mut maps, change.undo_of(done));
            assert_eq!(sorted(maps), sorted(before.entries()), "after {done} steps");
        }
    }

    #[test]
    fn allowed_remotes_go_in_first_and_come_out_last() {
        let open = rules(&["tcp/2222=192.168.0.12:22"]);
        let restricted = rules(&["tcp/2222=192.168.0.12:22,allow=198.51.100.0/24"]);
        let restrict = MapChange::for_rules(&open, &restricted);
        let steps: Vec<Step> = restrict.steps().collect();
        assert!(matches!(steps[0], Step::PutAllowed(_)), "{steps:?}");
        assert!(
            steps[1..]
                .iter()
                .all(|step| matches!(step, Step::PutForward(..))),
            "{steps:?}"
        );
        let steps: Vec<Step> = MapChange::for_rules(&restricted, &open).steps().collect();
        assert!(
            matches!(steps.last(), Some(Step::RemoveAllowed(_))),
            "{steps:?}"
        );
    }

    #[test]
    fn the_changed_rules_alone_give_the_whole_sets_difference() {
        let before = rules(&[
            "tcp/2222=192.168.0.12:22,allow=198.51.100.0/24,name=ssh",
            "udp/6881-6883=192.168.0.20,name=torrent",
            "tcp/443=192.168.0.14,name=web",
            "udp/27015=192.168.0.15,name=game",
        ]);
        let mut after = before.clone();
        after.remove("torrent").unwrap();
        // Its port goes to another server in the same change.
        after
            .add("udp/6881=192.168.0.21,name=other".parse().unwrap(), None)
            .unwrap();
        after.get_mut("ssh").unwrap().allow = vec!["203.0.113.0/24".parse().unwrap()];
        after.get_mut("game").unwrap().enabled = false;
        let whole = MapChange::between(&before.entries(), &after.entries());
        let change = MapChange::for_rules(&before, &after);
        assert_eq!(
            change.steps().collect::<Vec<_>>(),
            whole.steps().collect::<Vec<_>>()
        );
        assert_eq!(change.inverse().steps().count(), whole.steps().count());
    }

    #[test]
    fn unchanged_rules_touch_nothing_and_new_ids_are_fresh() {
        let set = rules(&["tcp/2222=192.168.0.12:22", "udp/53=192.168.0.2"]);
        assert!(MapChange::for_rules(&set, &set).is_empty());
        let mut more = set.clone();
        let id = more
            .add("tcp/80=192.168.0.12".parse().unwrap(), None)
            .unwrap();
        let change = MapChange::for_rules(&set, &more);
        assert_eq!(change.fresh_rule_ids(), &[id]);
        // Only the new rule's two entries (inbound and outbound).
        assert_eq!(change.steps().count(), 2);
    }
}
