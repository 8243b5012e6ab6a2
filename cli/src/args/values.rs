//! Value parsers of the flags: the shared parsers of `shoal_proto::validate`,
//! and the few the CLI has of its own (counts, `--tail`, `SERVICE=REPLICAS`).
//!
//! Each is used through [`Quoting`], because clap's own error for a refused value
//! repeats the whole value: a 131,000-character `--mount` would print 131 KB.
//! [`Quoting`] words the error as clap does but quotes a bounded prefix of the
//! value and its size ([`validate::quoted`]).

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::ValueEnum;
use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::ErrorKind;
use shoal_proto::validate::{self, quoted};
use shoal_proto::{ConfigReference, Mount, PortConfig, SecretReference};

/// A parser `Fn(&str) -> Result<T, String>` whose refusal reads
/// `invalid value "5x" for '--restart-delay <DURATION>': <why>`, with the value
/// quoted through [`validate::quoted`].
#[derive(Clone)]
pub struct Quoting<F>(pub F);

impl<T, F> TypedValueParser for Quoting<F>
where
    F: Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let Some(text) = value.to_str() else {
            return Err(clap::Error::new(ErrorKind::InvalidUtf8).format(&mut cmd.clone()));
        };
        (self.0)(text).map_err(|why| {
            let flag = arg.map_or_else(|| "...".to_owned(), ToString::to_string);
            let message = format!("invalid value {} for '{flag}': {why}", quoted(text));
            clap::Error::raw(ErrorKind::ValueValidation, message).format(&mut cmd.clone())
        })
    }
}

/// The parser of a flag taking one of an enum's names (`--update-order`), with
/// [`Quoting`]'s bounded error (clap's `value_enum` repeats the whole value) and
/// the names listed in `--help` as `value_enum` lists them.
#[derive(Clone)]
pub struct Choice<E>(PhantomData<E>);

pub fn choice<E>() -> Choice<E> {
    Choice(PhantomData)
}

impl<E: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Choice<E> {
    type Value = E;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<E, clap::Error> {
        let parse = |s: &str| {
            E::from_str(s, false).map_err(|_| {
                let names: Vec<String> = E::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|p| p.get_name().to_string())
                    .collect();
                format!("use one of: {}", names.join(", "))
            })
        };
        Quoting(parse).parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value()),
        ))
    }
}

pub(super) fn duration(s: &str) -> Result<i64, String> {
    validate::parse_duration(s)
}

pub(super) fn bytes(s: &str) -> Result<i64, String> {
    validate::parse_bytes(s)
}

pub(super) fn cpus(s: &str) -> Result<i64, String> {
    validate::parse_cpus(s)
}

pub(super) fn publish(s: &str) -> Result<PortConfig, String> {
    validate::parse_publish(s)
}

pub(super) fn mount(s: &str) -> Result<Mount, String> {
    validate::parse_mount(s)
}

pub(super) fn secret_ref(s: &str) -> Result<SecretReference, String> {
    validate::parse_secret_ref(s)
}

pub(super) fn config_ref(s: &str) -> Result<ConfigReference, String> {
    validate::parse_config_ref(s)
}

pub(super) fn label(s: &str) -> Result<(String, String), String> {
    validate::parse_label(s)
}

/// A non-negative whole number, refused in words rather than "invalid digit".
pub fn count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err("must not be negative".into());
    }
    t.parse()
        .map_err(|_| format!("{} is not a whole number", quoted(t)))
}

/// `--tail`: a number of lines, or "all" (sent as -1).
pub fn tail(s: &str) -> Result<i64, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(-1);
    }
    let n = count(s).map_err(|e| format!("{e} (expected a number of lines or \"all\")"))?;
    i64::try_from(n).map_err(|_| format!("{n} is too large"))
}

pub(super) fn count_u32(s: &str) -> Result<u32, String> {
    let n = count(s)?;
    u32::try_from(n).map_err(|_| format!("{n} is too large"))
}

/// `SERVICE=REPLICAS` for `service scale`.
pub(super) fn scale_target(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{} is not SERVICE=REPLICAS", quoted(s)))?;
    if name.is_empty() {
        return Err(format!("{} names no service", quoted(s)));
    }
    let n = count(n).map_err(|e| format!("replicas of {}: {e}", quoted(name)))?;
    Ok((name.to_string(), n))
}
