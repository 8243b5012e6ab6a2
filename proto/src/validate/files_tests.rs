//! Secrets and configs: specs, references and the flag syntax.

use super::*;
use crate::TaskSpec;
use crate::v1::{ContainerSpec, ServiceSpec};

fn secret(name: &str, data: &[u8]) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        data: data.to_vec(),
        ..Default::default()
    }
}

fn field(r: Result) -> String {
    r.expect_err("should be refused").field
}

#[test]
fn secret_names_follow_docker() {
    assert_eq!(secret_spec(&secret("db_password.v1-a", b"x")), Ok(()));
    for bad in ["", "-x", ".x", "a/b", "a b", "é"] {
        assert_eq!(field(secret_spec(&secret(bad, b"x"))), "name", "{bad:?}");
    }
    assert_eq!(secret_spec(&secret(&"a".repeat(64), b"x")), Ok(()));
    let err = secret_spec(&secret(&"a".repeat(65), b"x")).unwrap_err();
    assert_eq!(err.field, "name");
    assert!(err.message.contains("64"), "{err}");
}

#[test]
fn values_are_one_byte_to_500_kib() {
    assert_eq!(secret_spec(&secret("s", &vec![7; MAX_DATA_SIZE])), Ok(()));
    let err = secret_spec(&secret("s", &vec![7; MAX_DATA_SIZE + 1])).unwrap_err();
    assert_eq!(err.field, "data");
    assert!(err.message.contains("512000"), "{err}");
    assert_eq!(field(secret_spec(&secret("s", b""))), "data");
    let config = ConfigSpec {
        name: "c".into(),
        data: vec![1; MAX_DATA_SIZE + 1],
        ..Default::default()
    };
    assert_eq!(field(config_spec(&config)), "data");
}

fn sref(name: &str, target: &str) -> SecretReference {
    SecretReference {
        secret_name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn cref(name: &str, target: &str) -> ConfigReference {
    ConfigReference {
        config_name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

#[test]
fn secret_targets_are_file_names() {
    assert_eq!(
        references(&[sref("a", "a"), sref("a", "a.copy")], &[]),
        Ok(())
    );
    for bad in ["", "x/y", "/abs", ".", "..", "../etc"] {
        assert_eq!(
            field(references(&[sref("a", bad)], &[])),
            "secret[0].target",
            "{bad:?}"
        );
    }
    let mut moded = sref("a", "a");
    moded.mode = Some(0o1000);
    assert_eq!(field(references(&[moded], &[])), "secret[0].mode");
    assert_eq!(field(references(&[sref("", "a")], &[])), "secret[0].source");
}

#[test]
fn config_targets_are_absolute_file_paths() {
    assert_eq!(references(&[], &[cref("c", "/etc/app.conf")]), Ok(()));
    for bad in ["", "etc/x", "/etc/", "/a/../etc/passwd"] {
        assert_eq!(
            field(references(&[], &[cref("c", bad)])),
            "config[0].target",
            "{bad:?}"
        );
    }
}

#[test]
fn no_two_references_share_a_target() {
    let err = references(&[sref("a", "t"), sref("b", "t")], &[]).unwrap_err();
    assert_eq!(err.field, "secret[1].target");
    assert!(err.message.contains("already mounted"), "{err}");
    assert_eq!(
        field(references(&[], &[cref("a", "/x"), cref("b", "/x")])),
        "config[1].target"
    );
    // A config placed where a secret already is.
    assert_eq!(
        field(references(
            &[sref("a", "t")],
            &[cref("b", "/run/secrets/t")]
        )),
        "config[0].target"
    );
}

#[test]
fn a_service_spec_checks_its_references() {
    let spec = ServiceSpec {
        name: "web".into(),
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    secrets: vec![sref("a", "../x")],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    };
    assert_eq!(
        field(crate::validate::service_spec(&spec)),
        "secret[0].target"
    );
}

#[test]
fn flags_take_a_name_or_docker_csv() {
    let r = parse_secret_ref("db").unwrap();
    assert_eq!((r.secret_name.as_str(), r.target.as_str()), ("db", "db"));
    assert_eq!((r.uid, r.gid, r.mode), (0, 0, None));

    let r = parse_secret_ref("source=db,target=password,uid=1000,gid=50,mode=0400").unwrap();
    assert_eq!(r.secret_name, "db");
    assert_eq!(r.target, "password");
    assert_eq!((r.uid, r.gid, r.mode), (1000, 50, Some(0o400)));
    assert!(r.secret_id.is_empty());

    let r = parse_secret_ref("db,target=pw,mode=0440").unwrap();
    assert_eq!((r.secret_name.as_str(), r.target.as_str()), ("db", "pw"));
    assert_eq!(r.mode, Some(0o440));

    let c = parse_config_ref("app").unwrap();
    assert_eq!((c.config_name.as_str(), c.target.as_str()), ("app", "/app"));
    let c = parse_config_ref("src=app,target=/etc/app.conf,mode=644").unwrap();
    assert_eq!(c.target, "/etc/app.conf");
    assert_eq!(c.mode, Some(0o644));

    for (bad, words) in [
        ("", "empty"),
        ("target=x", "missing source"),
        ("source=a,mode=9", "octal"),
        ("source=a,uid=root", "uid"),
        ("source=a,colour=red", "unknown option"),
        ("source=a,target=", "target is empty"),
        ("a,b", "invalid reference"),
        ("a,target=x,b", "expected key=value"),
    ] {
        let err = parse_secret_ref(bad).unwrap_err();
        assert!(err.contains(words), "{bad:?}: {err}");
    }
}
