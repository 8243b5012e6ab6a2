use shoal_proto::control_server::Control;
use shoal_proto::*;
use tonic::{Code, Request};

use super::ControlService;
use crate::store::Store;

fn spec(name: &str, image: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

async fn create(api: &ControlService, spec: ServiceSpec) -> Result<Service, tonic::Status> {
    api.create_service(Request::new(CreateServiceRequest { spec: Some(spec) }))
        .await
        .map(|r| r.into_inner().service.unwrap())
}

#[tokio::test]
async fn create_then_find_by_name_and_prefix() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let svc = create(&api, spec("web", "nginx:1.27", 3)).await.unwrap();
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
    create(&api, spec("web", "nginx", 1)).await.unwrap();
    let cases = [
        (spec("", "nginx", 1), Code::InvalidArgument, "name"),
        (spec("api", "", 1), Code::InvalidArgument, "image"),
        (spec("api", "Bad Image", 1), Code::InvalidArgument, "image"),
        (spec("web", "nginx", 1), Code::AlreadyExists, "web"),
    ];
    for (bad, code, needle) in cases {
        let err = create(&api, bad).await.unwrap_err();
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
    create(&api, a.clone()).await.unwrap();
    a.name = "b".into();
    let err = create(&api, a).await.unwrap_err();
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
    let svc = create(&api, spec("web", "nginx:1", 2)).await.unwrap();
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
    create(&api, spec("web", "nginx", 1)).await.unwrap();
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
