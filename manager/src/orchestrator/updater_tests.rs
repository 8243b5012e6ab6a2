//! Rolling updates driven end to end (the harness of `orchestrator/tests.rs`):
//! stop-first and start-first batches, pausing on failure and resuming on the
//! next spec change.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use shoal_proto::{
    RestartPolicy, Service, ServiceSpec, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState,
};

use crate::orchestrator::task::{is_live, observed};
use crate::orchestrator::tests::{Harness, live, live_slots, replicated, with_restart};
use crate::store::{MemState, Stored};
use crate::test_fixtures::DEADLINE;

/// What a watcher of every committed state saw of one service's slots.
#[derive(Debug, Default, Clone, Copy)]
struct Worst {
    /// Most slots at once without a live task that runs.
    out: usize,
    /// Most live tasks at once.
    live: usize,
}

/// Follow every committed change (not samples of it) and record the worst
/// moments of `service_id`'s `replicas` slots, until the store goes away.
fn watch_slots(h: &Harness, service_id: &str, replicas: usize) -> tokio::task::JoinHandle<Worst> {
    let (initial, mut rx) = h.store.read_and_subscribe(|s| {
        s.tasks_of_service(service_id)
            .map(|t| (t.id.clone(), t.clone()))
            .collect::<HashMap<_, _>>()
    });
    let watched = service_id.to_string();
    tokio::spawn(async move {
        let mut tasks = initial;
        let mut worst = Worst::default();
        while let Ok(batch) = rx.recv().await {
            for change in &batch.changes {
                if let Stored::Task(t) = &change.object
                    && t.service_id == watched
                {
                    tasks.insert(t.id.clone(), Task::clone(t));
                }
            }
            let serving: HashSet<u64> = tasks
                .values()
                .filter(|t| is_live(t) && observed(t) == TaskState::Running)
                .map(|t| t.slot)
                .collect();
            worst.out = worst.out.max(replicas - serving.len().min(replicas));
            worst.live = worst
                .live
                .max(tasks.values().filter(|t| is_live(t)).count());
        }
        worst
    })
}

/// Run agent passes until `done` holds, or fail naming `what`.
async fn drive_until(h: &Harness, service_id: &str, what: &str, done: impl Fn(&MemState) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        h.agent_pass(service_id).await;
        if h.store.read(&done) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out driving until: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn update_state(s: &MemState, id: &str) -> UpdateState {
    s.service(id)
        .and_then(|svc| svc.update_status.as_ref())
        .map(|u| u.state())
        .unwrap_or(UpdateState::None)
}

/// The control API's part of an update: a new image and a new spec version.
fn new_image(version: u64, image: &'static str) -> impl Fn(&mut Service) {
    move |s: &mut Service| {
        s.spec_version = version;
        let task = s.spec.as_mut().unwrap().task.as_mut().unwrap();
        task.container.as_mut().unwrap().image = image.into();
    }
}

fn all_live_at(s: &MemState, id: &str, version: u64, replicas: usize) -> bool {
    let live: Vec<&Task> = s.tasks_of_service(id).filter(|t| is_live(t)).collect();
    live.len() == replicas
        && live
            .iter()
            .all(|t| t.spec_version == version && observed(t) == TaskState::Running)
}

async fn running_service(h: &Harness, spec: ServiceSpec, replicas: usize) -> String {
    let id = h.create_service(spec).await;
    drive_until(h, &id, "every replica runs", |s| {
        all_live_at(s, &id, 1, replicas)
    })
    .await;
    id
}

#[tokio::test]
async fn rolling_update_stop_first_replaces_one_at_a_time() {
    let h = Harness::start(5);
    let mut spec = replicated(3);
    spec.update = Some(UpdateConfig {
        parallelism: Some(1),
        monitor_ms: Some(50),
        ..Default::default()
    });
    let id = running_service(&h, spec, 3).await;
    let checker = watch_slots(&h, &id, 3);

    h.update_service(&id, new_image(2, "nginx:2")).await;
    drive_until(&h, &id, "update completed", |s| {
        update_state(s, &id) == UpdateState::Completed
    })
    .await;
    let tasks = h.tasks(&id);
    assert_eq!(live_slots(&tasks), vec![1, 2, 3]);
    for t in live(&tasks) {
        assert_eq!(t.spec_version, 2);
        assert_eq!(
            t.spec.as_ref().unwrap().container.as_ref().unwrap().image,
            "nginx:2"
        );
    }
    let status = h
        .store
        .read(|s| s.service(&id).unwrap().update_status.clone())
        .unwrap();
    assert!(status.started_at > 0 && status.completed_at >= status.started_at);
    h.stop().await;
    let worst = tokio::time::timeout(DEADLINE, checker)
        .await
        .expect("checker ends")
        .unwrap();
    assert_eq!(
        worst.out, 1,
        "stop-first with parallelism 1 takes exactly one slot out at a time"
    );
}

#[tokio::test]
async fn rolling_update_start_first_keeps_every_slot_serving() {
    let h = Harness::start(5);
    let mut spec = replicated(2);
    spec.update = Some(UpdateConfig {
        parallelism: Some(1),
        order: UpdateOrder::StartFirst as i32,
        monitor_ms: Some(20),
        ..Default::default()
    });
    let id = running_service(&h, spec, 2).await;
    let checker = watch_slots(&h, &id, 2);

    h.update_service(&id, new_image(2, "nginx:2")).await;
    drive_until(&h, &id, "update completed", |s| {
        update_state(s, &id) == UpdateState::Completed
    })
    .await;
    drive_until(&h, &id, "old tasks stopped", |s| all_live_at(s, &id, 2, 2)).await;
    h.stop().await;
    let worst = tokio::time::timeout(DEADLINE, checker)
        .await
        .expect("checker ends")
        .unwrap();
    assert_eq!(
        worst.out, 0,
        "start-first never leaves a slot without a running task"
    );
    assert_eq!(worst.live, 3, "one extra task at a time");
}

#[tokio::test]
async fn a_failed_update_pauses_and_resumes_on_the_next_spec() {
    let h = Harness::start(5);
    let mut spec = with_restart(
        replicated(2),
        RestartPolicy {
            delay_ms: Some(20),
            ..Default::default()
        },
    );
    spec.update = Some(UpdateConfig {
        parallelism: Some(1),
        monitor_ms: Some(1_000),
        ..Default::default()
    });
    let id = running_service(&h, spec, 2).await;
    h.update_service(&id, new_image(2, "broken:2")).await;

    // The first new task fails before it ever runs.
    let new = h
        .eventually("a task of the new version", |s| {
            s.tasks_of_service(&id)
                .find(|t| t.spec_version == 2)
                .cloned()
        })
        .await;
    h.set_state(&new.id, TaskState::Failed).await;
    h.eventually("update paused", |s| {
        (update_state(s, &id) == UpdateState::Paused).then_some(())
    })
    .await;
    let status = h
        .store
        .read(|s| s.service(&id).unwrap().update_status.clone())
        .unwrap();
    assert!(status.message.contains(&new.id), "{}", status.message);
    h.settle().await;
    let old_left = h
        .tasks(&id)
        .iter()
        .filter(|t| is_live(t) && t.spec_version == 1)
        .count();
    assert_eq!(old_left, 1, "the paused update leaves the other slot alone");

    h.update_service(&id, new_image(3, "nginx:3")).await;
    drive_until(&h, &id, "update completed", |s| {
        update_state(s, &id) == UpdateState::Completed
    })
    .await;
    drive_until(&h, &id, "all at version 3", |s| all_live_at(s, &id, 3, 2)).await;
    h.stop().await;
}
