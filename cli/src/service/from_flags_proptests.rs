//! Property tests of the CLI's own parsers and of whole command lines: any
//! value of any flag is parsed or refused, never a panic, and the refusal stays
//! short however long the value (clap's usage line included).
//!
//! `SHOAL_PROPTEST_CASES` sets the case count (default 256); the dedicated run
//! is in docs/LIMITS.md.

use clap::Parser;
use proptest::prelude::*;

use super::*;
use crate::args::{Cli, count, tail};

/// Longest refusal of a command line: the value's bounded quote, the parser's
/// reason and clap's usage lines.
const MAX_ERROR_LEN: usize = 1024;

fn cases() -> u32 {
    std::env::var("SHOAL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Every flag of `service create` that takes a value.
const FLAGS: &[&str] = &[
    "--name",
    "--replicas",
    "--env",
    "--publish",
    "--mount",
    "--secret",
    "--config",
    "--constraint",
    "--placement-pref",
    "--label",
    "--container-label",
    "--replicas-max-per-node",
    "--reserve-cpu",
    "--reserve-memory",
    "--limit-cpu",
    "--limit-memory",
    "--restart-condition",
    "--restart-delay",
    "--restart-max-attempts",
    "--restart-window",
    "--update-parallelism",
    "--update-delay",
    "--update-order",
    "--update-failure-action",
    "--update-monitor",
    "--health-cmd",
    "--health-interval",
    "--health-retries",
    "--health-timeout",
    "--health-start-period",
    "--workdir",
    "--user",
    "--hostname",
    "--stop-signal",
    "--stop-grace-period",
    "--entrypoint",
];

/// Values shaped like flag values, any short text, and huge runs of one character.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        "[0-9.]{0,22}(ns|ms|s|m|h|k|g|t|p|x)?",
        "[a-z0-9=,./:!_ -]{0,30}",
        any::<String>().prop_map(|s| s.chars().take(30).collect()),
        (
            prop::sample::select(&[64usize, 65, 4097, 131_000][..]),
            any::<char>()
        )
            .prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
    .boxed()
}

fn no_env(_: &str) -> Option<String> {
    None
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_flag_value_is_parsed_or_refused_briefly(
        flag in prop::sample::select(FLAGS),
        value in value(),
        image in prop_oneof![Just("nginx".to_string()), value()],
    ) {
        // `--flag=VALUE`, so that a value starting with '-' is not read as a flag
        // (clap's "unexpected argument" error repeats what it did not expect).
        let flag_value = format!("{flag}={value}");
        let argv = ["shoal", "service", "create", flag_value.as_str(), "--", image.as_str()];
        let refusal = match Cli::try_parse_from(argv) {
            Err(e) => Some(e.to_string()),
            Ok(cli) => match cli.command {
                crate::args::Command::Service(crate::args::ServiceCommand::Create(c)) => {
                    create_spec(&c, &no_env).err().map(|e| e.to_string())
                }
                _ => None,
            },
        };
        if let Some(e) = refusal {
            prop_assert!(e.len() < MAX_ERROR_LEN, "{}-byte error for {flag}", e.len());
        }
        let argv = ["shoal", "service", "scale", "--", value.as_str()];
        if let Err(e) = Cli::try_parse_from(argv) {
            prop_assert!(e.to_string().len() < MAX_ERROR_LEN, "scale: {} bytes", e.to_string().len());
        }
    }

    #[test]
    fn the_cli_parsers_never_panic(input in value()) {
        for result in [
            count(&input).map(|_| ()),
            tail(&input).map(|_| ()),
        ] {
            if let Err(e) = result {
                prop_assert!(e.len() < MAX_ERROR_LEN);
            }
        }
        if let Err(e) = spread(&input) {
            prop_assert!(e.to_string().len() < MAX_ERROR_LEN);
        }
        if let Err(e) = publish_rm_target(&input) {
            prop_assert!(e.to_string().len() < MAX_ERROR_LEN);
        }
        let words = split_words(&input);
        prop_assert!(words.iter().map(String::len).sum::<usize>() <= input.len());
        let name = generated_name(&input);
        prop_assert!(name.len() <= 56, "{name}");
    }
}
