//! Services the orchestrator leaves alone: a stored spec that today's rules
//! refuse, and a service whose reconcile panicked. Each is marked with why,
//! the other services are served as before, and fixing the spec (or removing
//! the service) ends it.

use shoal_proto::Service;

use super::*;

fn error_of(s: &MemState, id: &str) -> Option<String> {
    s.service(id).map(|svc: &Service| svc.error.clone())
}

#[tokio::test]
async fn a_stored_spec_over_the_limits_is_marked_and_left_alone_until_fixed() {
    let h = Harness::start(5);
    // Written straight into the store, as an older version could have: the
    // control API refuses it today.
    let mut huge = replicated(1_000_000_000);
    huge.name = "huge".into();
    let huge = h.create_service(huge).await;
    let calm = h.create_service(replicated(3)).await;

    let error = h
        .eventually("the over-limit service is marked", |s| {
            error_of(s, &huge).filter(|e| !e.is_empty())
        })
        .await;
    assert!(error.contains("replicas"), "names the field: {error}");
    assert!(error.contains("not valid"), "says why: {error}");
    h.eventually("the other service gets its tasks", |s| {
        (s.tasks_of_service(&calm).count() == 3).then_some(())
    })
    .await;
    h.settle().await;
    assert_eq!(h.tasks(&huge).len(), 0, "no task is created for it");

    h.update_service(&huge, |s| s.spec.as_mut().unwrap().replicas = 2)
        .await;
    h.eventually("fixed: its tasks are created and the mark cleared", |s| {
        (s.tasks_of_service(&huge).count() == 2 && error_of(s, &huge)?.is_empty()).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_service_whose_reconcile_panics_is_marked_and_the_others_are_served() {
    let h = Harness::start(5);
    let mut boom = replicated(2);
    boom.name = "boom-in-reconcile".into();
    panic_on(Some(&boom.name));
    let boom = h.create_service(boom).await;
    let error = h
        .eventually("the failing service is marked", |s| {
            error_of(s, &boom).filter(|e| !e.is_empty())
        })
        .await;
    assert!(
        error.contains("injected failure for boom-in-reconcile"),
        "the panic's message is kept: {error}"
    );

    // The orchestrator lives on and serves every other service.
    let calm = h.create_service(replicated(2)).await;
    h.eventually("another service gets its tasks", |s| {
        (s.tasks_of_service(&calm).count() == 2).then_some(())
    })
    .await;
    assert_eq!(h.tasks(&boom).len(), 0);

    // Left alone while its spec stays the same, tried again once it changes.
    panic_on(None);
    h.settle().await;
    assert_eq!(h.tasks(&boom).len(), 0, "not retried on an unchanged spec");
    h.update_service(&boom, |s| s.spec.as_mut().unwrap().replicas = 3)
        .await;
    h.eventually("a new spec is reconciled and the mark cleared", |s| {
        (s.tasks_of_service(&boom).count() == 3 && error_of(s, &boom)?.is_empty()).then_some(())
    })
    .await;
    h.stop().await;
}
