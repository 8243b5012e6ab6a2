//! Secrets and configs through the Control API: values sealed in the store and
//! never sent back, references resolved by name, removal refused while used.

use shoal_proto::control_server::Control;
use shoal_proto::*;
use tonic::{Code, Request};

use crate::control::ControlService;
use crate::seal::DataKey;
use crate::store::{Object, Store, encode};
use crate::test_fixtures::create_service;

const VALUE: &[u8] = b"correct horse battery staple";

fn api(store: &Store, key: &DataKey) -> ControlService {
    ControlService::new(store.clone(), None).with_data_key(key.clone())
}

async fn create_secret(
    api: &ControlService,
    name: &str,
    data: &[u8],
) -> Result<Secret, tonic::Status> {
    api.create_secret(Request::new(CreateSecretRequest {
        spec: Some(SecretSpec {
            name: name.into(),
            data: data.to_vec(),
            ..Default::default()
        }),
    }))
    .await
    .map(|r| r.into_inner().secret.unwrap())
}

async fn create_config(api: &ControlService, name: &str, data: &[u8]) -> Config {
    api.create_config(Request::new(CreateConfigRequest {
        spec: Some(ConfigSpec {
            name: name.into(),
            data: data.to_vec(),
            ..Default::default()
        }),
    }))
    .await
    .unwrap()
    .into_inner()
    .config
    .unwrap()
}

fn service(name: &str, secrets: &[&str], configs: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas: 1,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    secrets: secrets
                        .iter()
                        .map(|s| validate::parse_secret_ref(s).unwrap())
                        .collect(),
                    configs: configs
                        .iter()
                        .map(|c| validate::parse_config_ref(c).unwrap())
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_secret_is_sealed_in_the_store_and_never_sent_back() {
    let (store, key) = (Store::in_memory(), DataKey::generate());
    let api = api(&store, &key);
    let created = create_secret(&api, "db", VALUE).await.unwrap();
    assert!(created.data_sealed.is_empty() && created.spec.as_ref().unwrap().data.is_empty());

    // The stored object holds the value sealed only.
    let stored = store.read(|s| s.secret(&created.id).cloned()).unwrap();
    assert_eq!(key.open(&stored.data_sealed).unwrap(), VALUE);
    let bytes = encode(&Object::Secret(stored.clone().into()));
    assert!(!contains(&bytes, VALUE));
    assert!(stored.spec.as_ref().unwrap().data.is_empty());

    let got = api
        .get_secret(Request::new(GetSecretRequest {
            secret: "db".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret
        .unwrap();
    assert_eq!(got.id, created.id);
    assert!(got.data_sealed.is_empty());
    let listed = api
        .list_secrets(Request::new(ListSecretsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .secrets;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].data_sealed.is_empty() && listed[0].spec.as_ref().unwrap().data.is_empty());
    // What the Watch API sends.
    match crate::control::redacted(Object::Secret(stored.into())) {
        Object::Secret(s) => assert!(s.data_sealed.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_secrets_are_refused_and_nothing_is_written() {
    let (store, key) = (Store::in_memory(), DataKey::generate());
    let api = api(&store, &key);
    create_secret(&api, "db", VALUE).await.unwrap();
    let too_big = vec![b'x'; validate::MAX_DATA_SIZE + 1];
    for (name, data, code, needle) in [
        (
            "big",
            &too_big[..],
            Code::InvalidArgument,
            "data: the secret is 512001 bytes",
        ),
        (
            "empty",
            b"",
            Code::InvalidArgument,
            "data: the secret is empty",
        ),
        (
            "bad/name",
            VALUE,
            Code::InvalidArgument,
            "name: invalid name",
        ),
        ("db", VALUE, Code::AlreadyExists, "name: a secret named db"),
    ] {
        let err = create_secret(&api, name, data).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(err.message().contains(needle), "{}", err.message());
    }
    assert_eq!(store.read(|s| s.secrets().count()), 1);
}

#[tokio::test]
async fn without_the_data_key_secrets_are_refused() {
    let store = Store::in_memory();
    let api = ControlService::new(store.clone(), None);
    let err = create_secret(&api, "db", VALUE).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn services_refer_to_secrets_and_configs_by_name_and_id() {
    let (store, key) = (Store::in_memory(), DataKey::generate());
    let api = api(&store, &key);
    let secret = create_secret(&api, "db", VALUE).await.unwrap();
    let config = create_config(&api, "app", b"port=80").await;

    let err = create_service(&api, service("web", &["db", "nope"], &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("secret[1].source") && err.message().contains("\"nope\""),
        "{}",
        err.message()
    );
    let err = create_service(&api, service("web", &[], &["gone"]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("config[0].source"),
        "{}",
        err.message()
    );
    assert_eq!(store.read(|s| s.services().count()), 0);

    let svc = create_service(&api, service("web", &["source=db,target=pw"], &["app"]))
        .await
        .unwrap();
    let c = svc
        .spec
        .unwrap()
        .task
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(c.secrets[0].secret_id, secret.id);
    assert_eq!(c.secrets[0].secret_name, "db");
    assert_eq!(c.configs[0].config_id, config.id);
    assert_eq!(c.configs[0].target, "/app");

    // Configs are shown with their data.
    let got = api
        .get_config(Request::new(GetConfigRequest {
            config: "app".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(got.spec.unwrap().data, b"port=80");
}

#[tokio::test]
async fn a_secret_in_use_is_not_removed_until_its_service_is() {
    let (store, key) = (Store::in_memory(), DataKey::generate());
    let api = api(&store, &key);
    create_secret(&api, "db", VALUE).await.unwrap();
    create_config(&api, "app", b"x").await;
    create_service(&api, service("web", &["db"], &["app"]))
        .await
        .unwrap();
    let err = api
        .remove_secret(Request::new(RemoveSecretRequest {
            secret: "db".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("in use by service: web"),
        "{}",
        err.message()
    );
    let err = api
        .remove_config(Request::new(RemoveConfigRequest {
            config: "app".into(),
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("web"), "{}", err.message());

    api.remove_service(Request::new(RemoveServiceRequest {
        service: "web".into(),
    }))
    .await
    .unwrap();
    api.remove_secret(Request::new(RemoveSecretRequest {
        secret: "db".into(),
    }))
    .await
    .unwrap();
    api.remove_config(Request::new(RemoveConfigRequest {
        config: "app".into(),
    }))
    .await
    .unwrap();
    assert_eq!(store.read(|s| s.secrets().count() + s.configs().count()), 0);
}
