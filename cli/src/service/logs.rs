//! `shoal service logs`: stream a service's task logs from the manager and print
//! each line as `docker service logs` does:
//! `[TIMESTAMP ]<service>.<slot>.<task id>@<hostname>    | <line>`, stdout lines
//! to stdout and stderr lines to stderr.

use std::collections::HashMap;
use std::io::Write;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{ListNodesRequest, LogMessage, LogStream, ServiceLogsRequest};
use tonic::transport::Channel;

use crate::args::LogsArgs;

/// Characters of a task id shown unless `--no-trunc`, as Docker shows them.
const SHORT_ID: usize = 12;

pub async fn run(client: &mut ControlClient<Channel>, args: &LogsArgs) -> anyhow::Result<()> {
    // Node names are read once: a node that joins later shows by id.
    let hostnames: HashMap<String, String> = if args.no_resolve || args.raw {
        HashMap::new()
    } else {
        client
            .list_nodes(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| (n.id, n.description.unwrap_or_default().hostname))
            .filter(|(_, hostname)| !hostname.is_empty())
            .collect()
    };
    let request = ServiceLogsRequest {
        service: args.service.clone(),
        follow: args.follow,
        tail: args.tail,
        timestamps: args.timestamps,
    };
    let mut stream = client.service_logs(request).await?.into_inner();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(batch) = stream.message().await? {
        for msg in &batch.messages {
            let target = if msg.stream() == LogStream::Stderr {
                &mut err
            } else {
                &mut out
            };
            format_line(msg, &hostnames, args, target);
        }
        // One write per batch and stream, flushed at once: `--follow` output
        // must show up while it happens, even through a pipe.
        if !write_all(&mut std::io::stdout().lock(), &mut out)
            || !write_all(&mut std::io::stderr().lock(), &mut err)
        {
            // The reader left (`| head`): nothing more to do.
            return Ok(());
        }
    }
    Ok(())
}

/// Write and clear `buf`; false when the reader is gone.
fn write_all(to: &mut impl Write, buf: &mut Vec<u8>) -> bool {
    if buf.is_empty() {
        return true;
    }
    let ok = to.write_all(buf).and_then(|()| to.flush()).is_ok();
    buf.clear();
    ok
}

/// Append one log line, prefixed as `args` ask, to `out`.
pub fn format_line(
    msg: &LogMessage,
    hostnames: &HashMap<String, String>,
    args: &LogsArgs,
    out: &mut Vec<u8>,
) {
    if !args.raw {
        if args.timestamps {
            out.extend_from_slice(shoal_proto::rfc3339::format_ns(msg.timestamp_ns).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(task_label(msg, args).as_bytes());
        out.push(b'@');
        let node = match hostnames.get(&msg.node_id) {
            Some(hostname) if !args.no_resolve => hostname,
            _ => &msg.node_id,
        };
        out.extend_from_slice(node.as_bytes());
        out.extend_from_slice(b"    | ");
    }
    out.extend_from_slice(&msg.data);
    out.push(b'\n');
}

/// `<service>.<slot>.<task id>` (the id cut to 12 characters unless
/// `--no-trunc`; left out with `--no-task-ids`).
fn task_label(msg: &LogMessage, args: &LogsArgs) -> String {
    let name = if msg.task_name.is_empty() {
        "?"
    } else {
        &msg.task_name
    };
    if args.no_task_ids {
        return name.to_string();
    }
    let id = if args.no_trunc {
        &msg.task_id
    } else {
        msg.task_id.get(..SHORT_ID).unwrap_or(&msg.task_id)
    };
    format!("{name}.{id}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, ServiceCommand};
    use crate::testing::parse;

    fn args(flags: &[&str]) -> LogsArgs {
        let argv: Vec<&str> = ["shoal", "service", "logs"]
            .iter()
            .chain(flags)
            .chain(&["web"])
            .copied()
            .collect();
        match parse(&argv).unwrap() {
            Command::Service(ServiceCommand::Logs(a)) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn msg(data: &str) -> LogMessage {
        LogMessage {
            task_id: "abc123def456ghi789".into(),
            task_name: "web.1".into(),
            node_id: "n1".into(),
            stream: LogStream::Stdout as i32,
            timestamp_ns: 1_709_251_199_123_456_789,
            data: data.as_bytes().to_vec(),
        }
    }

    fn line(msg: &LogMessage, args: &LogsArgs) -> String {
        let hostnames = HashMap::from([("n1".to_string(), "node-1".to_string())]);
        let mut out = Vec::new();
        format_line(msg, &hostnames, args, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_are_prefixed_like_docker() {
        assert_eq!(
            line(&msg("hello"), &args(&[])),
            "web.1.abc123def456@node-1    | hello\n"
        );
        assert_eq!(
            line(&msg("hello"), &args(&["-t"])),
            "2024-02-29T23:59:59.123456789Z web.1.abc123def456@node-1    | hello\n"
        );
        assert_eq!(
            line(&msg("x"), &args(&["--no-task-ids"])),
            "web.1@node-1    | x\n"
        );
        assert_eq!(
            line(&msg("x"), &args(&["--no-trunc", "--no-resolve"])),
            "web.1.abc123def456ghi789@n1    | x\n"
        );
        assert_eq!(
            line(&msg("only this"), &args(&["--raw", "-t"])),
            "only this\n"
        );
        // A node the CLI does not know shows by id.
        let mut other = msg("y");
        other.node_id = "n9".into();
        assert_eq!(line(&other, &args(&[])), "web.1.abc123def456@n9    | y\n");
    }

    #[test]
    fn tail_takes_a_count_or_all() {
        assert_eq!(args(&[]).tail, -1);
        assert_eq!(args(&["--tail", "all"]).tail, -1);
        assert_eq!(args(&["-n", "5"]).tail, 5);
        let err =
            Cli::try_parse_from(["shoal", "service", "logs", "--tail", "x", "web"]).unwrap_err();
        assert!(err.to_string().contains("--tail"), "{err}");
        let a = args(&["-f", "-t"]);
        assert!(a.follow && a.timestamps && !a.raw);
    }
}
