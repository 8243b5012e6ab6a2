//! The rules `apply` enforces for secrets and configs: unique names per kind,
//! services refer only to existing ones, and none is removed while a service
//! uses it.

use shoal_proto::{
    Config, ConfigSpec, ContainerSpec, Secret, SecretSpec, Service, ServiceSpec, TaskSpec,
};

use crate::store::{Action, Kind, Object, Store, StoreError};
use crate::test_fixtures::container_with_files;

fn secret(id: &str, name: &str) -> Object {
    Object::Secret(Box::new(Secret {
        id: id.into(),
        spec: Some(SecretSpec {
            name: name.into(),
            ..Default::default()
        }),
        data_sealed: vec![1, 2, 3],
        ..Default::default()
    }))
}

fn config(id: &str, name: &str) -> Object {
    Object::Config(Box::new(Config {
        id: id.into(),
        spec: Some(ConfigSpec {
            name: name.into(),
            data: b"x".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

fn service(id: &str, name: &str, secrets: &[&str], configs: &[&str]) -> Object {
    Object::Service(Box::new(Service {
        id: id.into(),
        spec: Some(ServiceSpec {
            name: name.into(),
            task: Some(
                TaskSpec {
                    container: Some(ContainerSpec {
                        image: "busybox".into(),
                        ..container_with_files(secrets, configs)
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

#[tokio::test]
async fn names_are_unique_per_kind() {
    let store = Store::in_memory();
    store
        .propose(vec![
            Action::Create(secret("x1", "db")),
            // A config may share a secret's name.
            Action::Create(config("g1", "db")),
        ])
        .await
        .unwrap();
    let err = store
        .propose(vec![Action::Create(secret("x2", "db"))])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AlreadyExists { kind: Kind::Secret, what } if what == "name db"),
        "{err}"
    );
    let err = store
        .propose(vec![Action::Create(config("g2", "db"))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                kind: Kind::Config,
                ..
            }
        ),
        "{err}"
    );
    store.read(|s| {
        assert_eq!(s.find_secret("db").unwrap().id, "x1");
        assert_eq!(s.find_config("db").unwrap().id, "g1");
        assert_eq!(s.secrets().count(), 1);
    });
}

#[tokio::test]
async fn services_refer_only_to_existing_secrets_and_configs() {
    let store = Store::in_memory();
    let err = store
        .propose(vec![Action::Create(service("s1", "web", &["x1"], &[]))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: Kind::Secret,
                ..
            }
        ),
        "{err}"
    );
    let err = store
        .propose(vec![Action::Create(service("s1", "web", &[], &["g1"]))])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                kind: Kind::Config,
                ..
            }
        ),
        "{err}"
    );
    // In one atomic proposal, the secret first: fine.
    store
        .propose(vec![
            Action::Create(secret("x1", "db")),
            Action::Create(config("g1", "app")),
            Action::Create(service("s1", "web", &["x1"], &["g1"])),
        ])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_used_secret_or_config_cannot_be_removed() {
    let store = Store::in_memory();
    store
        .propose(vec![
            Action::Create(secret("x1", "db")),
            Action::Create(config("g1", "app")),
            Action::Create(service("s1", "web", &["x1"], &["g1"])),
            Action::Create(service("s2", "api", &["x1"], &[])),
        ])
        .await
        .unwrap();
    let err = store
        .propose(vec![Action::Delete(secret("x1", "db"))])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "secret db is in use by services: api, web; remove it from them first"
    );
    let err = store
        .propose(vec![Action::Delete(config("g1", "app"))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("by service: web"), "{err}");
    assert!(store.read(|s| s.secret("x1").is_some()));

    // Gone with the services that used it.
    store
        .propose(vec![
            Action::Delete(service("s1", "web", &[], &[])),
            Action::Delete(service("s2", "api", &[], &[])),
            Action::Delete(secret("x1", "db")),
            Action::Delete(config("g1", "app")),
        ])
        .await
        .unwrap();
    store.read(|s| {
        assert!(s.secret("x1").is_none() && s.secret_by_name("db").is_none());
        assert!(s.config("g1").is_none() && s.config_by_name("app").is_none());
    });
}
