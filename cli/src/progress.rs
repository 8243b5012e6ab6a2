//! The live convergence display of `service create|update|scale` (unless
//! `--detach`): follows the service's tasks through the manager's `Watch` API
//! and shows one line per slot, like Docker:
//!
//! ```text
//! overall progress: 2 out of 3 tasks
//! 1/3: running
//! 2/3: running
//! 3/3: rejected: image nope:1 is not available
//! verify: Service converged
//! ```
//!
//! [`Tasks`] holds what the CLI knows of the service's tasks: one `ListTasks`
//! sets it, then every watch event about them updates it. [`summarize`] is the
//! pure part (tasks in, lines out); [`watch`] does the IO, redrawing on each
//! change: in place on a terminal, only the changed lines otherwise. Ctrl-C
//! stops watching and leaves the service alone; so does a watch stream that
//! ends, with an error that says so.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use shoal_proto::control_client::ControlClient;
use shoal_proto::store_object::Object;
use shoal_proto::watch_client::WatchClient;
use shoal_proto::{
    ListTasksRequest, Service, ServiceMode, Task, TaskState, WatchEvent, WatchKind, WatchRequest,
    ids, state,
};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(120);

/// What convergence means for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Goal {
    pub global: bool,
    /// Replicated mode: the number of slots.
    pub replicas: u64,
    /// Tasks must run this version of the task template.
    pub spec_version: u64,
}

impl Goal {
    pub fn of(service: &Service) -> Goal {
        let spec = service.spec.clone().unwrap_or_default();
        Goal {
            global: spec.mode() == ServiceMode::Global,
            replicas: spec.replicas,
            spec_version: service.spec_version,
        }
    }
}

/// One frame of the display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The header and one line per slot.
    pub lines: Vec<String>,
    pub converged: bool,
    /// The most recent task error, kept for the timeout message.
    pub last_error: Option<String>,
}

/// The tasks of one service as the CLI knows them: a listing, then the watch
/// events that follow it.
#[derive(Debug, Clone)]
pub struct Tasks {
    service_id: String,
    /// By id, so that [`summarize`] sees them in a stable order.
    tasks: BTreeMap<String, Task>,
}

/// What a watch event meant to the display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Nothing about the service's tasks (another service, a stale copy).
    Unchanged,
    /// One of its tasks came, changed or went: redraw.
    Changed,
    /// The service itself was removed.
    ServiceRemoved,
}

impl Tasks {
    /// The service's tasks as `ListTasks` returned them.
    pub fn new(service_id: &str, listed: Vec<Task>) -> Tasks {
        Tasks {
            service_id: service_id.to_string(),
            tasks: listed.into_iter().map(|t| (t.id.clone(), t)).collect(),
        }
    }

    /// Apply one watch event. Events carry whole objects, and a task's
    /// `meta.version` is the Raft index of its last change: an event older
    /// than the copy in hand (the watch opens before the listing, so the
    /// first events may predate it) is ignored.
    pub fn apply(&mut self, event: &WatchEvent) -> Seen {
        let Some(object) = event.object.as_ref().and_then(|o| o.object.as_ref()) else {
            return Seen::Unchanged;
        };
        let deleted = event.kind == WatchKind::Delete as i32;
        match object {
            Object::Service(service) if deleted && service.id == self.service_id => {
                Seen::ServiceRemoved
            }
            Object::Task(task) if task.service_id == self.service_id => {
                if deleted {
                    return match self.tasks.remove(&task.id) {
                        Some(_) => Seen::Changed,
                        None => Seen::Unchanged,
                    };
                }
                let version = |t: &Task| t.meta.unwrap_or_default().version;
                match self.tasks.get(&task.id) {
                    Some(known) if version(known) > version(task) || *known == **task => {
                        Seen::Unchanged
                    }
                    _ => {
                        self.tasks.insert(task.id.clone(), Task::clone(task));
                        Seen::Changed
                    }
                }
            }
            _ => Seen::Unchanged,
        }
    }

    /// Apply the events of one watch message, in order.
    pub fn apply_all(&mut self, events: &[WatchEvent]) -> Seen {
        let mut seen = Seen::Unchanged;
        for event in events {
            match self.apply(event) {
                Seen::ServiceRemoved => return Seen::ServiceRemoved,
                Seen::Changed => seen = Seen::Changed,
                Seen::Unchanged => {}
            }
        }
        seen
    }

    pub fn summarize(&self, goal: Goal) -> Progress {
        summarize(self.tasks.values(), goal)
    }
}

/// The live task of a slot: the newest one the manager still wants.
fn newest<'a>(tasks: impl Iterator<Item = &'a Task>) -> Option<&'a Task> {
    tasks.max_by_key(|t| {
        let m = t.meta.unwrap_or_default();
        (m.created_at, m.version)
    })
}

/// Turn the task list into the lines to show.
pub fn summarize<'a>(tasks: impl IntoIterator<Item = &'a Task>, goal: Goal) -> Progress {
    // Group by slot (replicated) or node (global); BTreeMap keeps the order stable.
    let mut groups: BTreeMap<(u64, String), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        let desired = state::from_i32(t.desired_state);
        if desired > TaskState::Running {
            continue;
        }
        let key = if goal.global {
            (0, t.node_id.clone())
        } else {
            (t.slot, String::new())
        };
        if !goal.global && (t.slot == 0 || t.slot > goal.replicas) {
            continue;
        }
        groups.entry(key).or_default().push(t);
    }
    let total = if goal.global {
        groups.len() as u64
    } else {
        goal.replicas
    };
    let mut lines = Vec::new();
    let mut done = 0;
    let mut last_error = None;
    let slots: Vec<(u64, String)> = if goal.global {
        groups.keys().cloned().collect()
    } else {
        (1..=goal.replicas).map(|s| (s, String::new())).collect()
    };
    for (slot, node) in slots {
        let label = if goal.global {
            ids::short(&node).to_string()
        } else {
            format!("{slot}/{total}")
        };
        let task = groups
            .get(&(slot, node))
            .and_then(|ts| newest(ts.iter().copied()));
        let Some(task) = task else {
            lines.push(format!("{label}: new"));
            continue;
        };
        let status = task.status.clone().unwrap_or_default();
        let st = state::from_i32(status.state);
        let current = task.spec_version == goal.spec_version;
        if st == TaskState::Running && current {
            done += 1;
        }
        let mut text = format!("{label}: {}", state::name(st));
        if !current {
            // Still the task of the previous spec: a rolling update has not reached it.
            text.push_str(" (old version)");
        }
        if !status.err.is_empty() {
            text.push_str(&format!(": {}", status.err));
            last_error = Some(status.err.clone());
        } else if st == TaskState::Pending && !status.message.is_empty() {
            // The scheduler's explanation ("no suitable node (...)").
            text.push_str(&format!(": {}", status.message));
            last_error = Some(status.message.clone());
        }
        lines.push(text);
    }
    lines.insert(0, format!("overall progress: {done} out of {total} tasks"));
    // A global service with no eligible node yet has nothing to wait for but
    // also nothing running: keep waiting rather than claim success.
    let converged = done == total && (total > 0 || (!goal.global && goal.replicas == 0));
    Progress {
        lines,
        converged,
        last_error,
    }
}

/// Redraws frames: in place on a terminal, changed lines only otherwise.
struct Screen {
    tty: bool,
    previous: Vec<String>,
}

impl Screen {
    fn draw(&mut self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            if !self.previous.is_empty() {
                let _ = write!(out, "\x1b[{}A", self.previous.len());
            }
            for line in lines {
                let _ = writeln!(out, "\x1b[2K{line}");
            }
        } else {
            for (i, line) in lines.iter().enumerate() {
                if self.previous.get(i) != Some(line) {
                    let _ = writeln!(out, "{line}");
                }
            }
        }
        let _ = out.flush();
        self.previous = lines.to_vec();
    }
}

/// Show progress until the service converges, Ctrl-C, or the deadline.
pub async fn watch(
    control: &mut ControlClient<Channel>,
    watcher: &mut WatchClient<Channel>,
    service_id: &str,
    goal: Goal,
) -> anyhow::Result<()> {
    let (mut events, mut tasks) = follow(control, watcher, service_id).await?;
    let mut screen = Screen {
        tty: std::io::stdout().is_terminal(),
        previous: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last_error = None;
    loop {
        let progress = tasks.summarize(goal);
        screen.draw(&progress.lines);
        if progress.last_error.is_some() {
            last_error = progress.last_error;
        }
        if progress.converged {
            println!("verify: Service converged");
            return Ok(());
        }
        // Wait for a change to the service's tasks.
        loop {
            let received = tokio::select! {
                _ = &mut ctrl_c => {
                    println!("Operation continuing in background.");
                    println!("Use `shoal service ps {service_id}` to check progress.");
                    return Ok(());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let why = last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
                    bail!(
                        "service {service_id} did not converge within {} seconds{why}; it keeps trying in the background",
                        DEADLINE.as_secs()
                    );
                }
                received = events.message() => received,
            };
            let message = match received {
                Ok(Some(message)) => message,
                // This CLI fell too far behind the changes: start over from
                // a fresh listing, as a poll would.
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    (events, tasks) = follow(control, watcher, service_id).await?;
                    break;
                }
                Ok(None) => bail!(watch_ended(service_id, "the manager closed the stream")),
                Err(status) if status.message().is_empty() => {
                    bail!(watch_ended(service_id, &status.to_string()))
                }
                Err(status) => bail!(watch_ended(service_id, status.message())),
            };
            match tasks.apply_all(&message.events) {
                Seen::Unchanged => {}
                Seen::Changed => break,
                // What `ListTasks` answers for a service that is gone.
                Seen::ServiceRemoved => bail!("service {service_id} not found"),
            }
        }
    }
}

/// Open a watch of tasks and services, then list the service's tasks: a
/// change in between arrives as an event, and one the listing holds already
/// is known by its version.
async fn follow(
    control: &mut ControlClient<Channel>,
    watcher: &mut WatchClient<Channel>,
    service_id: &str,
) -> anyhow::Result<(tonic::Streaming<shoal_proto::WatchMessage>, Tasks)> {
    let request = WatchRequest {
        kinds: vec!["service".into(), "task".into()],
    };
    let events = watcher.watch(request).await?.into_inner();
    let request = ListTasksRequest {
        services: vec![service_id.to_string()],
        ..Default::default()
    };
    let listed = crate::service::list_tasks(control, request).await?;
    Ok((events, Tasks::new(service_id, listed)))
}

/// Why the display stopped before the service converged, when the watch did.
fn watch_ended(service_id: &str, why: &str) -> String {
    format!(
        "the watch of service {service_id}'s tasks ended before it converged ({why}); \
         it keeps trying in the background: see `shoal service ps {service_id}`"
    )
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
