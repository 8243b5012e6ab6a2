use shoal_proto::control_server::Control;
use shoal_proto::*;
use tonic::{Code, Request};

use super::ControlService;
use crate::store::Store;
use crate::test_fixtures::{create_service, spec};

#[tokio::test]
async fn create_then_find_by_name_and_prefix() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let svc = create_service(&api, spec("web", "nginx:1.27", 3))
        .await
        .unwrap();
    assert_eq!(svc.spec_version, 1);
    for reference in [svc.id.clone(), "web".to_string(), svc.id[..6].to_string()] {
        let got = api
            .get_service(Request::new(GetServiceRequest { service: reference }))
            .await
            .unwrap()
            .into_inner()
            .service
            .unwrap();
        assert_eq!(got.id, svc.id);
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    create_service(&api, spec("web", "nginx", 1)).await.unwrap();
    let cases = [
        (spec("", "nginx", 1), Code::InvalidArgument, "name"),
        (spec("api", "", 1), Code::InvalidArgument, "image"),
        (spec("api", "Bad Image", 1), Code::InvalidArgument, "image"),
        (spec("web", "nginx", 1), Code::AlreadyExists, "web"),
    ];
    for (bad, code, needle) in cases {
        let err = create_service(&api, bad).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().contains(needle),
            "{:?} should name {needle}",
            err.message()
        );
    }
    assert_eq!(store.read(|s| s.services().count()), 1);
}

#[tokio::test]
async fn a_port_published_by_another_service_is_refused() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let mut a = spec("a", "nginx", 1);
    a.endpoint = Some(EndpointSpec {
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
    });
    create_service(&api, a.clone()).await.unwrap();
    a.name = "b".into();
    let err = create_service(&api, a).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains("publish") && err.message().contains("8080"),
        "{}",
        err.message()
    );
    assert_eq!(store.read(|s| s.services().count()), 1);
}

#[tokio::test]
async fn scaling_keeps_spec_version_and_an_image_change_bumps_it() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let svc = create_service(&api, spec("web", "nginx:1", 2))
        .await
        .unwrap();
    let update = |spec: ServiceSpec, version: u64| UpdateServiceRequest {
        service: "web".into(),
        version,
        spec: Some(spec),
    };
    let scaled = api
        .update_service(Request::new(update(spec("web", "nginx:1", 5), 0)))
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(scaled.spec_version, 1);
    assert_eq!(scaled.spec.as_ref().unwrap().replicas, 5);
    let stale = svc.meta.as_ref().unwrap().version;
    let err = api
        .update_service(Request::new(update(spec("web", "nginx:2", 5), stale)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{}", err.message());
    let current = scaled.meta.as_ref().unwrap().version;
    let updated = api
        .update_service(Request::new(update(spec("web", "nginx:2", 5), current)))
        .await
        .unwrap()
        .into_inner()
        .service
        .unwrap();
    assert_eq!(updated.spec_version, 2);
    assert_eq!(
        updated
            .previous_spec
            .unwrap()
            .task
            .unwrap()
            .into_inner()
            .container
            .unwrap()
            .image,
        "nginx:1"
    );
}

#[tokio::test]
async fn remove_deletes_the_service() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    create_service(&api, spec("web", "nginx", 1)).await.unwrap();
    api.remove_service(Request::new(RemoveServiceRequest {
        service: "web".into(),
    }))
    .await
    .unwrap();
    assert_eq!(store.read(|s| s.services().count()), 0);
    let err = api
        .remove_service(Request::new(RemoveServiceRequest {
            service: "web".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn scale(
    api: &ControlService,
    service: &Service,
    replicas: u64,
) -> Result<(), tonic::Status> {
    let mut spec = service.spec.clone().unwrap();
    spec.replicas = replicas;
    api.update_service(Request::new(UpdateServiceRequest {
        service: service.id.clone(),
        spec: Some(spec),
        version: 0,
    }))
    .await
    .map(|_| ())
}

#[tokio::test]
async fn the_services_together_ask_for_at_most_the_cluster_task_limit() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let half = super::services::MAX_CLUSTER_TASKS / 2;
    let a = create_service(&api, spec("a", "nginx", half))
        .await
        .unwrap();
    let b = create_service(&api, spec("b", "nginx", half - 1))
        .await
        .unwrap();
    let err = create_service(&api, spec("c", "nginx", 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("replicas: "), "{}", err.message());
    assert!(
        err.message()
            .contains(&super::services::MAX_CLUSTER_TASKS.to_string()),
        "names the limit: {}",
        err.message()
    );
    assert!(
        store.read(|s| s.service_by_name("c").is_none()),
        "nothing written"
    );
    create_service(&api, spec("c", "nginx", 1)).await.unwrap();
    let err = scale(&api, &b, half).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    // Scaling down is always allowed, and makes room.
    scale(&api, &a, 10).await.unwrap();
    scale(&api, &b, half).await.unwrap();
}

#[test]
fn the_cluster_task_limit_leaves_room_for_the_nodes() {
    use super::services::{MAX_CLUSTER_TASKS, cluster_task_limit};
    assert_eq!(cluster_task_limit(0), MAX_CLUSTER_TASKS);
    assert_eq!(cluster_task_limit(2_500), MAX_CLUSTER_TASKS);
    assert_eq!(cluster_task_limit(2_501), MAX_CLUSTER_TASKS - 16);
    assert_eq!(cluster_task_limit(10_000), 80_000);
    assert_eq!(cluster_task_limit(15_000), 0);
    assert_eq!(cluster_task_limit(u64::MAX), 0);
}

#[tokio::test]
async fn a_large_cluster_takes_fewer_tasks_and_says_why() {
    let store = Store::in_memory();
    let nodes: Vec<_> = (0..6_000)
        .map(|i| {
            crate::store::Action::Create(crate::store::Object::Node(Box::new(shoal_proto::Node {
                id: format!("node-{i}"),
                ..Default::default()
            })))
        })
        .collect();
    store.propose(nodes).await.unwrap();
    let api = ControlService::new(store.clone(), None);
    let limit = super::services::cluster_task_limit(6_000);
    assert_eq!(limit, 144_000);
    create_service(&api, spec("a", "nginx", 100_000))
        .await
        .unwrap();
    create_service(&api, spec("a2", "nginx", limit - 100_001))
        .await
        .unwrap();
    let err = create_service(&api, spec("b", "nginx", 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message()
            .contains("limit of 144000 for a cluster of 6000 nodes"),
        "{}",
        err.message()
    );
    create_service(&api, spec("b", "nginx", 1)).await.unwrap();
}

#[tokio::test]
async fn task_pages_hold_at_most_their_budget_and_add_up_to_the_whole_list() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let mut big = spec("big", "nginx", 0);
    let container = big.task.as_mut().unwrap().container.as_mut().unwrap();
    container.env = (0..30)
        .map(|i| format!("V{i}={}", "x".repeat(1000)))
        .collect();
    let svc = create_service(&api, big).await.unwrap();
    // 300 tasks of about 31 KB each: about 9 MB, over a client's 4 MiB.
    let tasks: Vec<_> = (0..300u64)
        .map(|slot| {
            let mut t = crate::orchestrator::task::new_task(
                &svc,
                slot % 100 + 1,
                "",
                TaskState::Running,
                1,
            );
            t.meta = Some(Meta {
                created_at: (slot / 100) as i64,
                ..Default::default()
            });
            crate::store::Action::Create(crate::store::Object::Task(t.into()))
        })
        .collect();
    store.propose(tasks).await.unwrap();

    let list = |paged: bool, after: String| {
        let api = &api;
        async move {
            api.list_tasks(Request::new(ListTasksRequest {
                services: vec!["big".into()],
                paged,
                after,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
        }
    };
    let whole = list(false, String::new()).await;
    assert_eq!(whole.tasks.len(), 300);
    assert!(whole.next.is_empty());
    let (mut paged, mut after, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = list(true, after).await;
        let bytes = prost::Message::encoded_len(&page);
        assert!(
            bytes <= super::services::TASK_PAGE_BYTES + 64,
            "page of {bytes} bytes"
        );
        assert!(!page.tasks.is_empty());
        paged.extend(page.tasks);
        pages += 1;
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    assert!(pages >= 4, "{pages} pages");
    let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&paged), ids(&whole.tasks), "same tasks, same order");

    let bad = api
        .list_tasks(Request::new(ListTasksRequest {
            paged: true,
            after: "nonsense".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("after: "));
}
