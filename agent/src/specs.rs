//! One copy of each service's task spec for all of its tasks on the node.
//!
//! Each task of an assignment message is decoded with a spec of its own,
//! although every task of a service carries the same one. The worker hands
//! each new task the copy it already holds for the task's service when the
//! two are equal, and the decoded copy is dropped at once: a node with a
//! thousand tasks of one service keeps one spec, not a thousand.

use std::collections::HashMap;

use shoal_proto::{SharedTaskSpec, Task};

/// The latest spec seen for each service.
#[derive(Default)]
pub(crate) struct Specs {
    by_service: HashMap<String, SharedTaskSpec>,
    /// Above this many services, drop the specs no task holds any more.
    prune_at: usize,
}

impl Specs {
    /// Points `task` at the spec already held for its service if they are
    /// equal; otherwise its spec becomes the one held for the service.
    pub(crate) fn share(&mut self, task: &mut Task) {
        let Some(spec) = task.spec.as_mut() else {
            return;
        };
        if let Some(known) = self.by_service.get(&task.service_id) {
            if known == spec {
                *spec = known.clone();
                return;
            }
        } else if self.by_service.len() >= self.prune_at {
            self.prune();
        }
        self.by_service
            .insert(task.service_id.clone(), spec.clone());
    }

    /// Forgets the specs that only this map holds (their services' tasks
    /// are gone, or run a newer spec).
    fn prune(&mut self) {
        self.by_service.retain(|_, spec| !spec.is_unique());
        self.prune_at = (self.by_service.len() * 2).max(16);
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::TaskSpec;

    use super::*;

    fn task(id: &str, service: &str, image: &str) -> Task {
        Task {
            id: id.into(),
            service_id: service.into(),
            spec: Some(TaskSpec::for_image(image).into()),
            ..Default::default()
        }
    }

    fn spec(task: &Task) -> &SharedTaskSpec {
        task.spec.as_ref().unwrap()
    }

    #[test]
    fn tasks_of_a_service_with_equal_specs_share_one() {
        let mut specs = Specs::default();
        let (mut a, mut b) = (task("a", "s1", "web:1"), task("b", "s1", "web:1"));
        assert!(!spec(&a).same(spec(&b)));
        specs.share(&mut a);
        specs.share(&mut b);
        assert!(spec(&a).same(spec(&b)));
    }

    #[test]
    fn a_changed_spec_is_kept_as_it_came_and_becomes_the_one_shared() {
        let mut specs = Specs::default();
        let (mut old, mut new, mut newer) = (
            task("a", "s1", "web:1"),
            task("b", "s1", "web:2"),
            task("c", "s1", "web:2"),
        );
        for t in [&mut old, &mut new, &mut newer] {
            specs.share(t);
        }
        assert_eq!((spec(&old).image(), spec(&new).image()), ("web:1", "web:2"));
        assert!(spec(&new).same(spec(&newer)));
        // Another service's equal spec is not mixed in.
        let mut other = task("d", "s2", "web:2");
        specs.share(&mut other);
        assert!(!spec(&other).same(spec(&new)));
    }

    #[test]
    fn specs_no_task_holds_are_dropped_as_services_come() {
        let mut specs = Specs::default();
        let mut kept = task("kept", "s0", "web:1");
        specs.share(&mut kept);
        for n in 1..40 {
            // Each task is dropped at once: its service has no task left.
            specs.share(&mut task("t", &format!("s{n}"), "web:1"));
        }
        assert!(specs.by_service.len() < 40, "{}", specs.by_service.len());
        assert!(specs.by_service.contains_key("s0"));
    }
}
