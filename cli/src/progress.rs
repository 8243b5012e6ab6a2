//! The live convergence display of `service create|update|scale` (unless
//! `--detach`): polls the service's tasks every 200 ms and shows one line per
//! slot, like Docker:
//!
//! ```text
//! overall progress: 2 out of 3 tasks
//! 1/3: running
//! 2/3: running
//! 3/3: rejected: image nope:1 is not available
//! verify: Service converged
//! ```
//!
//! [`summarize`] is the pure part (tasks in, lines out); [`watch`] does the IO,
//! redrawing in place on a terminal and printing only changed lines otherwise.
//! Ctrl-C stops watching and leaves the service alone.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use shoal_proto::control_client::ControlClient;
use shoal_proto::{ListTasksRequest, Service, ServiceMode, Task, TaskState, ids, state};
use tonic::transport::Channel;

const POLL_INTERVAL: Duration = Duration::from_millis(200);
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

/// The live task of a slot: the newest one the manager still wants.
fn newest<'a>(tasks: impl Iterator<Item = &'a Task>) -> Option<&'a Task> {
    tasks.max_by_key(|t| {
        let m = t.meta.unwrap_or_default();
        (m.created_at, m.version)
    })
}

/// Turn the task list into the lines to show.
pub fn summarize(tasks: &[Task], goal: Goal) -> Progress {
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
    client: &mut ControlClient<Channel>,
    service_id: &str,
    goal: Goal,
) -> anyhow::Result<()> {
    let mut screen = Screen {
        tty: std::io::stdout().is_terminal(),
        previous: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last_error = None;
    loop {
        let request = ListTasksRequest {
            services: vec![service_id.to_string()],
            ..Default::default()
        };
        let tasks = crate::service::list_tasks(client, request).await?;
        let progress = summarize(&tasks, goal);
        screen.draw(&progress.lines);
        if progress.last_error.is_some() {
            last_error = progress.last_error;
        }
        if progress.converged {
            println!("verify: Service converged");
            return Ok(());
        }
        tokio::select! {
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
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{failed, task};

    const GOAL: Goal = Goal {
        global: false,
        replicas: 3,
        spec_version: 1,
    };

    #[test]
    fn counts_running_slots() {
        let tasks = vec![
            task(1, "n", 1, TaskState::Running),
            task(2, "n", 1, TaskState::Preparing),
        ];
        let p = summarize(&tasks, GOAL);
        assert_eq!(
            p.lines,
            [
                "overall progress: 1 out of 3 tasks",
                "1/3: running",
                "2/3: preparing",
                "3/3: new"
            ]
        );
        assert!(!p.converged);
    }

    #[test]
    fn shows_the_newest_task_and_its_error() {
        let mut old = failed(task(1, "n", 1, TaskState::Rejected), "no such image");
        old.desired_state = TaskState::Shutdown as i32;
        let tasks = vec![
            old,
            failed(task(1, "n", 5, TaskState::Rejected), "still no image"),
            task(2, "n", 1, TaskState::Running),
            task(3, "n", 1, TaskState::Running),
        ];
        let p = summarize(&tasks, GOAL);
        assert_eq!(p.lines[1], "1/3: rejected: still no image");
        assert_eq!(p.last_error.as_deref(), Some("still no image"));
        assert!(!p.converged);
    }

    #[test]
    fn converges_only_on_the_current_spec_version() {
        let mut tasks: Vec<Task> = (1..=3)
            .map(|s| task(s, "n", 1, TaskState::Running))
            .collect();
        assert!(summarize(&tasks, GOAL).converged);
        let updating = Goal {
            spec_version: 2,
            ..GOAL
        };
        assert!(!summarize(&tasks, updating).converged);
        for t in &mut tasks {
            t.spec_version = 2;
        }
        assert!(summarize(&tasks, updating).converged);
    }

    #[test]
    fn global_services_count_nodes() {
        let goal = Goal {
            global: true,
            replicas: 0,
            spec_version: 1,
        };
        assert!(!summarize(&[], goal).converged);
        let tasks = vec![
            task(0, "node-a", 1, TaskState::Running),
            task(0, "node-b", 1, TaskState::Starting),
        ];
        let p = summarize(&tasks, goal);
        assert_eq!(p.lines[0], "overall progress: 1 out of 2 tasks");
        assert_eq!(p.lines[1], "node-a: running");
    }

    #[test]
    fn scaled_to_zero_is_converged() {
        let goal = Goal {
            global: false,
            replicas: 0,
            spec_version: 1,
        };
        assert!(summarize(&[], goal).converged);
    }
}
