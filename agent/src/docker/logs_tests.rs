//! The log frames parsed (pure), and [`DockerRuntime::logs`] against the real engine: a container labelled as a
//! task of a test node (no network: it needs none), whose log is read back
//! demultiplexed, tailed and followed. Skipped without an engine unless
//! `SHOAL_REQUIRE_DOCKER=1`.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use shoal_proto::LogStream;

use super::*;
use crate::docker::test_image::ensure_test_image;
use crate::docker::translate::{LABEL_NODE_ID, LABEL_TASK_ID};
use crate::docker::*;
use crate::runtime::LogLine;

fn out(text: &str) -> LogOutput {
    LogOutput::StdOut {
        message: text.as_bytes().to_vec().into(),
    }
}

#[test]
fn a_timestamped_frame_is_one_line() {
    let lines = frame_lines(out("2024-02-29T23:59:59.123456789Z hello world\n"));
    assert_eq!(
        lines,
        vec![LogLine {
            stream: LogStream::Stdout,
            timestamp_ns: 1_709_251_199_123_456_789,
            data: b"hello world".to_vec(),
        }]
    );
}

#[test]
fn stderr_stays_stderr_and_empty_lines_survive() {
    let lines = frame_lines(LogOutput::StdErr {
        message: b"1970-01-01T00:00:01Z \n".to_vec().into(),
    });
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].stream, LogStream::Stderr);
    assert_eq!(lines[0].timestamp_ns, 1_000_000_000);
    assert!(lines[0].data.is_empty());
}

#[test]
fn frames_without_a_timestamp_or_with_several_lines() {
    let lines = frame_lines(out("no timestamp here\r\nsecond\n"));
    let texts: Vec<&[u8]> = lines.iter().map(|l| l.data.as_slice()).collect();
    assert_eq!(texts, [b"no timestamp here".as_slice(), b"second"]);
    assert!(lines.iter().all(|l| l.timestamp_ns == 0));
    assert!(
        frame_lines(LogOutput::StdIn {
            message: Default::default()
        })
        .is_empty()
    );
}

const DEADLINE: Duration = Duration::from_secs(30);

/// Removes the container even when the test fails.
struct Remove(String);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

async fn read_all(rt: &DockerRuntime, node: &str, task: &str, options: LogOptions) -> Vec<LogLine> {
    let lines = rt.logs(node, task, options).await.expect("logs");
    tokio::time::timeout(DEADLINE, lines.collect::<Vec<_>>())
        .await
        .expect("a log without follow ends")
        .into_iter()
        .map(|l| l.expect("a log line"))
        .collect()
}

fn text(line: &LogLine) -> &str {
    std::str::from_utf8(&line.data).unwrap()
}

#[tokio::test]
async fn logs_are_demultiplexed_tailed_and_followed() {
    let rt = match DockerRuntime::connect().await {
        Ok(rt) => rt,
        Err(e) if std::env::var("SHOAL_REQUIRE_DOCKER").as_deref() != Ok("1") => {
            eprintln!("skipping Docker test: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let image = ensure_test_image(rt.client()).await.expect("test image");
    let node = format!("test-node-{:016x}", rand::random::<u64>());
    let task = format!("task{:016x}", rand::random::<u64>());
    let script = "echo one; echo two >&2; echo three; i=0; while true; do sleep 1; i=$((i+1)); echo tick-$i; done";
    let body = ContainerCreateBody {
        image: Some(image),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        labels: Some(HashMap::from([
            (LABEL_TASK_ID.to_string(), task.clone()),
            (LABEL_NODE_ID.to_string(), node.clone()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("shoal-logs-test-{task}");
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = rt
        .client()
        .create_container(Some(options), body)
        .await
        .expect("create");
    let _remove = Remove(created.id.clone());
    rt.client()
        .start_container(&created.id, None)
        .await
        .expect("start");

    // The first three lines, in order, each on its stream and stamped.
    let deadline = std::time::Instant::now() + DEADLINE;
    let lines = loop {
        let lines = read_all(&rt, &node, &task, LogOptions::default()).await;
        if lines.len() >= 3 {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "only {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The engine copies stdout and stderr separately: order holds within a
    // stream only.
    let of = |stream| -> Vec<&str> {
        lines[..3]
            .iter()
            .filter(|l| l.stream == stream)
            .map(text)
            .collect()
    };
    assert_eq!(of(LogStream::Stdout), ["one", "three"]);
    assert_eq!(of(LogStream::Stderr), ["two"]);
    let now_ns = shoal_proto::now_ms() * 1_000_000;
    assert!(
        lines
            .iter()
            .all(|l| l.timestamp_ns > now_ns - 600_000_000_000
                && l.timestamp_ns <= now_ns + 1_000_000_000)
    );

    // Tail: only the last line written so far.
    let tailed = read_all(
        &rt,
        &node,
        &task,
        LogOptions {
            follow: false,
            tail: Some(1),
        },
    )
    .await;
    assert_eq!(tailed.len(), 1, "{tailed:?}");

    // Follow from the end (tail 0): what arrives was written after the stream
    // opened.
    let mut follow = rt
        .logs(
            &node,
            &task,
            LogOptions {
                follow: true,
                tail: Some(0),
            },
        )
        .await
        .expect("follow");
    let line = tokio::time::timeout(DEADLINE, follow.next())
        .await
        .expect("a new line while following")
        .expect("the stream stays open")
        .expect("a log line");
    assert!(text(&line).starts_with("tick-"), "{line:?}");

    // Other nodes' and unknown tasks' logs are not found.
    for (n, t) in [
        ("other-node", task.as_str()),
        (node.as_str(), "no-such-task"),
    ] {
        match rt.logs(n, t, LogOptions::default()).await {
            Err(RuntimeError::NotFound(_)) => {}
            Err(e) => panic!("expected NotFound for {n}/{t}, got {e}"),
            Ok(_) => panic!("expected NotFound for {n}/{t}, got a stream"),
        }
    }
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    let _ = rt
        .client()
        .remove_container(&created.id, Some(options))
        .await;
}
