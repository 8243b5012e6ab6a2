//! Waiting on a started container without polling: the engine's `wait` call
//! blocks until the process ends, and its event stream (filtered on the container,
//! `health_status` and `die`) says when the health check decides. Each wait first
//! reads the container's current state so that a decision taken before the call
//! (an agent restart, a fast exit) is seen at once; the event subscription starts
//! from a moment *before* that read (`since`), so nothing between the two is lost.

use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerState as DockerState, EventMessage, HealthStatusEnum};
use bollard::query_parameters::{EventsOptionsBuilder, WaitContainerOptions};
use futures::{Stream, StreamExt};
use shoal_proto::Task;

use super::translate::{NO_EXIT_CODE, container_name, health_event, process_exit, unhealthy_exit};
use super::{DockerRuntime, status};
use crate::runtime::Exit;

/// Pause before re-subscribing to an event stream the engine closed.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// Where a container stands, as far as waiting is concerned.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The process is not running (exited, or never started).
    Exited(Exit),
    NoHealthcheck,
    Starting,
    Healthy,
    Unhealthy(Exit),
}

fn verdict(state: &DockerState) -> Verdict {
    if !state.running.unwrap_or(false) {
        return Verdict::Exited(process_exit(
            state.exit_code.unwrap_or_default(),
            state.oom_killed.unwrap_or(false),
        ));
    }
    let Some(health) = &state.health else {
        return Verdict::NoHealthcheck;
    };
    match health.status {
        Some(HealthStatusEnum::HEALTHY) => Verdict::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => {
            Verdict::Unhealthy(unhealthy_exit(health.log.as_deref().unwrap_or_default()))
        }
        Some(HealthStatusEnum::STARTING) => Verdict::Starting,
        Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) | None => Verdict::NoHealthcheck,
    }
}

/// An `Exit` for a task that ended without an exit of its process.
fn ended(message: String) -> Exit {
    Exit {
        exit_code: NO_EXIT_CODE,
        message,
        unhealthy: false,
    }
}

/// The events `since` value for "from just before now" (the engine replays its
/// recent events from that time; a second of margin covers clock rounding).
fn since_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    secs.saturating_sub(1).to_string()
}

impl DockerRuntime {
    async fn state(&self, name: &str) -> Result<DockerState, Exit> {
        match self.inspect(name).await {
            Ok(Some(c)) => Ok(c.state.unwrap_or_default()),
            Ok(None) => Err(ended(format!("container {name} was removed outside shoal"))),
            Err(e) => Err(ended(e.to_string())),
        }
    }

    fn events(
        &self,
        name: &str,
        actions: &[&str],
        since: &str,
    ) -> impl Stream<Item = Result<EventMessage, DockerError>> + use<> {
        let filters = std::collections::HashMap::from([
            ("type", vec!["container".to_string()]),
            ("container", vec![name.to_string()]),
            ("event", actions.iter().map(|a| a.to_string()).collect()),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(since)
            .filters(&filters)
            .build();
        self.docker.events(Some(options))
    }

    /// The unhealthy verdict with the last probe's output.
    async fn unhealthy(&self, name: &str) -> Exit {
        match self.state(name).await {
            Ok(state) => unhealthy_exit(
                state
                    .health
                    .and_then(|h| h.log)
                    .as_deref()
                    .unwrap_or_default(),
            ),
            Err(_) => unhealthy_exit(&[]),
        }
    }

    /// Blocks until the process ends (at once if it already has).
    async fn process_end(&self, name: &str) -> Exit {
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        let code = match wait.next().await {
            Some(Ok(answer)) => answer.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) if status(&e) == Some(404) => {
                return ended(format!("container {name} was removed outside shoal"));
            }
            Some(Err(e)) => return ended(self.error(e).to_string()),
            None => return ended("the Docker engine ended the wait without an answer".to_string()),
        };
        let oom_killed = match self.state(name).await {
            Ok(state) => state.oom_killed.unwrap_or(false),
            Err(_) => false,
        };
        process_exit(code, oom_killed)
    }

    /// Resolves once the health check calls the container unhealthy; never
    /// otherwise (the process end is awaited beside it).
    async fn unhealthy_verdict(&self, name: &str, mut since: String) -> Exit {
        loop {
            let mut events = std::pin::pin!(self.events(name, &["health_status"], &since));
            while let Some(event) = events.next().await {
                match event {
                    Ok(e)
                        if health_event(e.action.as_deref().unwrap_or_default()) == Some(false) =>
                    {
                        return self.unhealthy(name).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "Docker event stream failed");
                        break;
                    }
                }
            }
            // The engine closed the stream (restart, error). If the engine is gone,
            // the process wait beside this one ends too; otherwise listen again.
            since = since_now();
            tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
        }
    }
}

/// See [`crate::runtime::Runtime::wait_running`].
pub(super) async fn wait_running(rt: &DockerRuntime, task: &Task) -> Result<(), Exit> {
    let name = container_name(task);
    let since = since_now();
    match verdict(&rt.state(&name).await?) {
        Verdict::NoHealthcheck | Verdict::Healthy => return Ok(()),
        Verdict::Exited(exit) | Verdict::Unhealthy(exit) => return Err(exit),
        Verdict::Starting => {}
    }
    tracing::debug!(task.id = %task.id, "waiting for the health check");
    let mut events = std::pin::pin!(rt.events(&name, &["health_status", "die"], &since));
    let failure = loop {
        match events.next().await {
            Some(Ok(event)) => {
                let action = event.action.unwrap_or_default();
                if action == "die" {
                    return Err(rt.process_end(&name).await);
                }
                match health_event(&action) {
                    Some(true) => return Ok(()),
                    Some(false) => return Err(rt.unhealthy(&name).await),
                    None => {}
                }
            }
            Some(Err(e)) => break rt.error(e).to_string(),
            None => break "the Docker engine closed its event stream".to_string(),
        }
    };
    // No event decided: the state as it is now may still do.
    match verdict(&rt.state(&name).await?) {
        Verdict::NoHealthcheck | Verdict::Healthy => Ok(()),
        Verdict::Exited(exit) | Verdict::Unhealthy(exit) => Err(exit),
        Verdict::Starting => Err(ended(format!("lost track of the health check: {failure}"))),
    }
}

/// See [`crate::runtime::Runtime::wait_exit`].
pub(super) async fn wait_exit(rt: &DockerRuntime, task: &Task) -> Exit {
    let name = container_name(task);
    let since = since_now();
    let state = match rt.state(&name).await {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    match verdict(&state) {
        Verdict::Exited(exit) | Verdict::Unhealthy(exit) => exit,
        Verdict::NoHealthcheck => rt.process_end(&name).await,
        Verdict::Starting | Verdict::Healthy => {
            tokio::select! {
                exit = rt.process_end(&name) => exit,
                exit = rt.unhealthy_verdict(&name, since) => exit,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{Health, HealthcheckResult};

    use super::*;

    fn running(health: Option<HealthStatusEnum>) -> DockerState {
        DockerState {
            running: Some(true),
            health: health.map(|status| Health {
                status: Some(status),
                failing_streak: Some(1),
                log: Some(vec![HealthcheckResult {
                    exit_code: Some(1),
                    output: Some("nope\n".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_the_engine_state() {
        assert_eq!(verdict(&running(None)), Verdict::NoHealthcheck);
        assert_eq!(
            verdict(&running(Some(HealthStatusEnum::NONE))),
            Verdict::NoHealthcheck
        );
        assert_eq!(
            verdict(&running(Some(HealthStatusEnum::STARTING))),
            Verdict::Starting
        );
        assert_eq!(
            verdict(&running(Some(HealthStatusEnum::HEALTHY))),
            Verdict::Healthy
        );
        let Verdict::Unhealthy(exit) = verdict(&running(Some(HealthStatusEnum::UNHEALTHY))) else {
            panic!("unhealthy expected");
        };
        assert_eq!(exit.message, "unhealthy: nope");
        let exited = DockerState {
            running: Some(false),
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(verdict(&exited), Verdict::Exited(process_exit(3, false)));
    }
}
