//! Task logs from the engine: find the task's container by its labels, read its
//! log (stdout and stderr demultiplexed: containers run without a TTY) and
//! split the engine's frames into [`LogLine`]s. The frame parsing is pure.
//!
//! The agent always asks the engine for timestamps: they cost a few bytes and
//! let the CLI decide whether to print them.

use std::collections::HashMap;

use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;
use shoal_proto::LogStream;

use super::DockerRuntime;
use super::translate::{LABEL_NODE_ID, LABEL_TASK_ID};
use crate::runtime::{LogLine, LogLines, LogOptions, RuntimeError};

pub(super) async fn logs(
    runtime: &DockerRuntime,
    node_id: &str,
    task_id: &str,
    options: LogOptions,
) -> Result<LogLines, RuntimeError> {
    let filters = HashMap::from([(
        "label",
        vec![
            format!("{LABEL_TASK_ID}={task_id}"),
            format!("{LABEL_NODE_ID}={node_id}"),
        ],
    )]);
    let list = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let found = runtime
        .docker
        .list_containers(Some(list))
        .await
        .map_err(|e| runtime.error(e))?;
    let Some(container_id) = found.into_iter().find_map(|c| c.id) else {
        return Err(RuntimeError::NotFound(task_id.to_string()));
    };
    let tail = options
        .tail
        .map_or_else(|| "all".to_string(), |n| n.to_string());
    let request = LogsOptionsBuilder::new()
        .follow(options.follow)
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail(&tail)
        .build();
    let runtime = runtime.clone();
    let lines = runtime
        .docker
        .logs(&container_id, Some(request))
        .flat_map(move |frame| {
            let lines = match frame {
                Ok(frame) => frame_lines(frame).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(runtime.error(e))],
            };
            futures::stream::iter(lines)
        });
    Ok(lines.boxed())
}

/// The lines of one engine frame: `<RFC 3339 timestamp> <text>\n`, stdout or
/// stderr. A frame normally holds one line; anything else is split, every
/// piece keeping the frame's timestamp.
pub(super) fn frame_lines(frame: LogOutput) -> Vec<LogLine> {
    let (stream, bytes) = match frame {
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            (LogStream::Stdout, message)
        }
        LogOutput::StdErr { message } => (LogStream::Stderr, message),
        // Nothing reads a task's stdin back.
        LogOutput::StdIn { .. } => return Vec::new(),
    };
    let mut text: &[u8] = &bytes;
    if let Some(stripped) = text.strip_suffix(b"\n") {
        text = stripped;
    }
    let mut timestamp_ns = 0;
    if let Some(space) = text.iter().position(|&b| b == b' ')
        && let Some(ns) = std::str::from_utf8(&text[..space])
            .ok()
            .and_then(shoal_proto::rfc3339::parse_ns)
    {
        timestamp_ns = ns;
        text = &text[space + 1..];
    }
    text.split(|&b| b == b'\n')
        .map(|line| LogLine {
            stream,
            timestamp_ns,
            data: line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
        })
        .collect()
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
