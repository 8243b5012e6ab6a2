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
