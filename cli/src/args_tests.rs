//! Tests of the command line definition: clap's own checks, and bad values
//! reported against their flag.

use super::*;
use clap::CommandFactory;

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

fn parse_err(args: &[&str]) -> String {
    Cli::try_parse_from(args)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn negative_replicas_name_the_flag() {
    let err = parse_err(&["shoal", "service", "create", "--replicas", "-1", "nginx"]);
    assert!(err.contains("--replicas"), "{err}");
    assert!(err.contains("negative"), "{err}");
    let err = parse_err(&["shoal", "service", "create", "--replicas=x", "nginx"]);
    assert!(err.contains("--replicas"), "{err}");
}

#[test]
fn bad_values_name_their_flag() {
    for (flag, value) in [
        ("--restart-delay", "5x"),
        ("--limit-memory", "lots"),
        ("--reserve-cpu", "-1"),
        ("--publish", "80:x"),
        ("--mount", "type=nfs,target=/a"),
        ("--label", "=v"),
        ("--update-order", "sideways"),
    ] {
        let err = parse_err(&["shoal", "service", "create", flag, value, "nginx"]);
        assert!(err.contains(flag), "{flag}: {err}");
    }
    let err = parse_err(&["shoal", "service", "ls", "--format", "xml"]);
    assert!(err.contains("--format"), "{err}");
}

#[test]
fn command_and_args_follow_the_image() {
    let cli = Cli::try_parse_from([
        "shoal", "service", "create", "--name", "s", "busybox", "sleep", "-x", "60",
    ])
    .unwrap();
    let Command::Service(ServiceCommand::Create(c)) = cli.command else {
        panic!("not a create");
    };
    assert_eq!(c.image, "busybox");
    assert_eq!(c.args, ["sleep", "-x", "60"]);
}

#[test]
fn scale_targets_parse() {
    assert_eq!(scale_target("web=3"), Ok(("web".into(), 3)));
    assert!(scale_target("web").is_err());
    assert!(scale_target("web=-1").unwrap_err().contains("negative"));
    assert!(scale_target("=2").is_err());
}

#[test]
fn health_flags_conflict_with_no_healthcheck() {
    let err = parse_err(&[
        "shoal",
        "service",
        "create",
        "--no-healthcheck",
        "--health-cmd",
        "true",
        "nginx",
    ]);
    assert!(err.contains("--no-healthcheck"), "{err}");
}

#[test]
fn managers_join_with_a_token_or_a_token_file() {
    let cli = Cli::try_parse_from([
        "shoal",
        "manager",
        "--join",
        "manager1:4280",
        "--token-file",
        "/run/shoal/join/manager.token",
    ])
    .unwrap();
    let Command::Manager(m) = cli.command else {
        panic!("not a manager");
    };
    assert_eq!(
        m.token_file.as_deref(),
        Some(std::path::Path::new("/run/shoal/join/manager.token"))
    );
    assert!(m.token.is_none());

    let err = parse_err(&["shoal", "manager", "--join", "m:4280"]);
    assert!(err.contains("--token"), "{err}");
    let err = parse_err(&[
        "shoal",
        "manager",
        "--join",
        "m:4280",
        "--token",
        "T",
        "--token-file",
        "/t",
    ]);
    assert!(
        err.contains("--token-file") && err.contains("--token "),
        "{err}"
    );
    let err = parse_err(&["shoal", "manager", "--token-file", "/t"]);
    assert!(err.contains("--join"), "{err}");
    let err = parse_err(&["shoal", "manager", "--join", "m:4280", "--token-file", ""]);
    assert!(err.contains("--token-file"), "{err}");
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn only_a_founding_manager_exports_join_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("join");
    let cli = Cli::try_parse_from([
        "shoal",
        "manager",
        "--export-join-tokens",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let Command::Manager(m) = cli.command else {
        panic!("not a manager");
    };
    assert_eq!(m.export_join_tokens.as_deref(), Some(out.as_path()));

    let err = parse_err(&[
        "shoal",
        "manager",
        "--join",
        "m:4280",
        "--token",
        "T",
        "--export-join-tokens",
        "/j",
    ]);
    assert!(err.contains("--export-join-tokens"), "{err}");
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let err = parse_err(&[
        "shoal",
        "manager",
        "--export-join-tokens",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("--export-join-tokens"), "{err}");
    assert!(err.contains("not a directory"), "{err}");
}

#[test]
fn agents_take_a_token_or_a_token_file() {
    let cli = Cli::try_parse_from([
        "shoal",
        "agent",
        "--manager",
        "manager1:4280",
        "--token-file",
        "/run/shoal/join/worker.token",
    ])
    .unwrap();
    let Command::Agent(a) = cli.command else {
        panic!("not an agent");
    };
    assert!(a.token_file.is_some());
    let err = parse_err(&[
        "shoal",
        "agent",
        "--manager",
        "m:4280",
        "--token",
        "T",
        "--token-file",
        "/t",
    ]);
    assert!(err.contains("--token-file"), "{err}");
    let err = parse_err(&["shoal", "agent", "--manager", "m:4280", "--token-file="]);
    assert!(err.contains("--token-file"), "{err}");
}
