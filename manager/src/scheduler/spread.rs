//! Choosing among the nodes that pass the filters, as a decision tree.
//!
//! Without spread preferences the tree is one leaf: a min-heap of candidate
//! nodes keyed by (tasks of this service, tasks overall, node id), so each
//! placement costs O(log nodes) instead of a scan. With preferences
//! (`node.labels.zone`, then `node.labels.rack`, ...) each level groups nodes by
//! that label's value (nodes without the label form the "" group) and keeps its
//! children in a min-heap keyed by the service's tasks in the whole subtree;
//! each task walks down the emptiest branch. Keys only grow while one group of
//! tasks is placed, so popping, placing and pushing back with +1 keeps every heap
//! exact without rescans.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// One node as the tree sees it. `rank` is the node's position in id order,
/// which doubles as the deterministic tie-break.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub rank: u32,
    pub service_tasks: u32,
    pub total_tasks: u32,
    /// Passed the filters at the start of the group.
    pub candidate: bool,
    pub labels: Option<&'a std::collections::HashMap<String, String>>,
}

enum TreeNode {
    /// (service tasks in subtree, value order, child index)
    Branch(BinaryHeap<Reverse<(u32, u32, u32)>>),
    /// (service tasks, total tasks, rank)
    Leaf(BinaryHeap<Reverse<(u32, u32, u32)>>),
}

/// The placement order for one group of identical tasks.
pub struct Tree {
    arena: Vec<TreeNode>,
}

impl Tree {
    /// A tree over `entries` (all live nodes, candidates or not: refused nodes
    /// still count in their branch's task total, as in Swarm).
    pub fn build(entries: &[Entry<'_>], spread: &[String]) -> Tree {
        let mut tree = Tree { arena: Vec::new() };
        let refs: Vec<&Entry<'_>> = entries.iter().collect();
        tree.build_level(&refs, spread);
        tree
    }

    /// Builds the subtree of `entries` at the next level; returns its index, or
    /// None when it holds no candidate (such a branch can take no task).
    fn build_level(&mut self, entries: &[&Entry<'_>], spread: &[String]) -> Option<u32> {
        let Some((key, rest)) = spread.split_first() else {
            let heap: BinaryHeap<_> = entries
                .iter()
                .filter(|e| e.candidate)
                .map(|e| Reverse((e.service_tasks, e.total_tasks, e.rank)))
                .collect();
            if heap.is_empty() {
                return None;
            }
            self.arena.push(TreeNode::Leaf(heap));
            return Some(self.arena.len() as u32 - 1);
        };
        let mut by_value: BTreeMap<&str, Vec<&Entry<'_>>> = BTreeMap::new();
        for e in entries {
            let value = e
                .labels
                .and_then(|l| l.get(key))
                .map(String::as_str)
                .unwrap_or("");
            by_value.entry(value).or_default().push(e);
        }
        let mut children = BinaryHeap::new();
        for (order, group) in by_value.values().enumerate() {
            let count = group.iter().map(|e| e.service_tasks).sum::<u32>();
            if let Some(child) = self.build_level(group, rest) {
                children.push(Reverse((count, order as u32, child)));
            }
        }
        if children.is_empty() {
            return None;
        }
        self.arena.push(TreeNode::Branch(children));
        Some(self.arena.len() as u32 - 1)
    }

    /// The rank of the node for the next task. `accept` runs the dynamic filters
    /// on a node; a node it refuses leaves the tree for the rest of the group
    /// (placing more tasks only makes it fuller). None: no node can take it.
    pub fn pick(&mut self, accept: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        if self.arena.is_empty() {
            return None;
        }
        // The root is pushed last.
        self.pick_at(self.arena.len() as u32 - 1, accept)
    }

    fn pick_at(&mut self, at: u32, accept: &mut impl FnMut(u32) -> bool) -> Option<u32> {
        loop {
            let top = match &mut self.arena[at as usize] {
                TreeNode::Leaf(heap) => {
                    let Reverse((service, total, rank)) = heap.pop()?;
                    if accept(rank) {
                        heap.push(Reverse((service + 1, total + 1, rank)));
                        return Some(rank);
                    }
                    continue;
                }
                TreeNode::Branch(heap) => heap.pop()?,
            };
            let Reverse((count, order, child)) = top;
            if let Some(rank) = self.pick_at(child, accept) {
                if let TreeNode::Branch(heap) = &mut self.arena[at as usize] {
                    heap.push(Reverse((count + 1, order, child)));
                }
                return Some(rank);
            }
            // The child is exhausted: it stays out of the heap.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn entry<'a>(rank: u32, service: u32, total: u32, l: &'a HashMap<String, String>) -> Entry<'a> {
        Entry {
            rank,
            service_tasks: service,
            total_tasks: total,
            candidate: true,
            labels: Some(l),
        }
    }

    fn place(tree: &mut Tree, n: usize) -> Vec<u32> {
        (0..n).map(|_| tree.pick(&mut |_| true).unwrap()).collect()
    }

    #[test]
    fn prefers_fewest_service_tasks_then_fewest_tasks_then_id() {
        let none = HashMap::new();
        let entries = [
            entry(0, 2, 2, &none),
            entry(1, 0, 9, &none),
            entry(2, 0, 1, &none),
        ];
        let mut tree = Tree::build(&entries, &[]);
        // Node 2 (0 of this service, 1 overall), then node 1, then 2 again...
        assert_eq!(place(&mut tree, 4), vec![2, 1, 2, 1]);
        // All at 2 tasks of the service now: node 0 has the fewest overall.
        assert_eq!(tree.pick(&mut |_| true), Some(0));
    }

    #[test]
    fn refused_nodes_leave_the_tree() {
        let none = HashMap::new();
        let entries = [entry(0, 0, 0, &none), entry(1, 0, 0, &none)];
        let mut tree = Tree::build(&entries, &[]);
        assert_eq!(tree.pick(&mut |r| r == 1), Some(1));
        assert_eq!(tree.pick(&mut |r| r == 1), Some(1));
        assert_eq!(tree.pick(&mut |_| false), None);
        assert_eq!(tree.pick(&mut |_| true), None);
    }

    #[test]
    fn spreads_over_label_values_before_nodes() {
        let east = labels(&[("zone", "east")]);
        let west = labels(&[("zone", "west")]);
        let none = HashMap::new();
        // Three nodes in east, one in west, one without the label.
        let entries = [
            entry(0, 0, 0, &east),
            entry(1, 0, 0, &east),
            entry(2, 0, 0, &east),
            entry(3, 0, 0, &west),
            entry(4, 0, 0, &none),
        ];
        let mut tree = Tree::build(&entries, &["zone".to_string()]);
        let placed = place(&mut tree, 6);
        let count = |ranks: &[u32]| placed.iter().filter(|r| ranks.contains(r)).count();
        assert_eq!(count(&[0, 1, 2]), 2, "{placed:?}");
        assert_eq!(count(&[3]), 2, "{placed:?}");
        assert_eq!(count(&[4]), 2, "{placed:?}");
    }

    #[test]
    fn existing_tasks_of_refused_nodes_count_in_their_branch() {
        let east = labels(&[("zone", "east")]);
        let west = labels(&[("zone", "west")]);
        let mut drained = entry(0, 4, 4, &east);
        drained.candidate = false;
        let entries = [drained, entry(1, 0, 0, &east), entry(2, 0, 0, &west)];
        let mut tree = Tree::build(&entries, &["zone".to_string()]);
        // West has 0 tasks of the service against east's 4: it takes the next 4.
        assert_eq!(place(&mut tree, 4), vec![2, 2, 2, 2]);
    }

    #[test]
    fn nested_preferences() {
        let a1 = labels(&[("zone", "a"), ("rack", "1")]);
        let a2 = labels(&[("zone", "a"), ("rack", "2")]);
        let b1 = labels(&[("zone", "b"), ("rack", "1")]);
        let entries = [
            entry(0, 0, 0, &a1),
            entry(1, 0, 0, &a1),
            entry(2, 0, 0, &a2),
            entry(3, 0, 0, &b1),
        ];
        let mut tree = Tree::build(&entries, &["zone".to_string(), "rack".to_string()]);
        let placed = place(&mut tree, 4);
        let count = |rank: u32| placed.iter().filter(|r| **r == rank).count();
        // Zone b gets half; in zone a each rack gets one.
        assert_eq!(count(3), 2, "{placed:?}");
        assert_eq!(count(2), 1, "{placed:?}");
        assert_eq!(count(0) + count(1), 1, "{placed:?}");
    }
}
