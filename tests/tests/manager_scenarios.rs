//! Issue 2's scenarios: a real `shoal manager` process on a loopback port, driven
//! through the real CLI, with in-process hollow agents (real gRPC sessions on the
//! fake runtime) as its nodes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::agents::HollowAgent;
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// Run a CLI command that must succeed; returns stdout.
async fn ok(m: &ManagerProcess, args: &[&str]) -> String {
    let out = m.cli(args).await;
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}\nmanager log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run a CLI command that must fail; returns its stderr.
async fn fails(m: &ManagerProcess, args: &[&str]) -> String {
    let out = m.cli(args).await;
    assert!(!out.status.success(), "shoal {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

async fn json(m: &ManagerProcess, args: &[&str]) -> Vec<Value> {
    let mut full = args.to_vec();
    full.extend(["--format", "json"]);
    serde_json::from_str(&ok(m, &full).await).expect("valid JSON array")
}

/// Running tasks of a service (desired and observed RUNNING), counted per node hostname.
async fn running_per_node(m: &ManagerProcess, service: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in json(m, &["service", "ps", service]).await {
        if t["desired_state"] == "running" && t["state"] == "running" {
            *per.entry(t["node"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
    }
    per
}

async fn wait_distribution(
    m: &ManagerProcess,
    service: &str,
    want: &[usize],
) -> anyhow::Result<()> {
    let mut want = want.to_vec();
    want.sort();
    eventually(&format!("{service} running as {want:?}"), WAIT, || async {
        let per = running_per_node(m, service).await;
        let mut got: Vec<usize> = per.values().copied().collect();
        got.sort();
        if got == want {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    })
    .await
}

async fn three_agents(m: &ManagerProcess) -> Vec<HollowAgent> {
    let cluster = m.join_target().await.unwrap();
    let agents: Vec<HollowAgent> = (1..=3)
        .map(|i| HollowAgent::start(&cluster, &format!("node-{i}"), &[]))
        .collect();
    eventually("3 ready nodes", WAIT, || async {
        let ready = json(m, &["node", "ls"])
            .await
            .iter()
            .filter(|n| n["status"] == "ready" && n["role"] == "worker")
            .count();
        if ready == 3 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await
    .unwrap();
    agents
}

#[tokio::test]
async fn replicated_service_lifecycle_spreads_scales_updates_and_removes() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let agents = three_agents(&m).await;

    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "6",
            "img:v1",
        ],
    )
    .await;
    wait_distribution(&m, "web", &[2, 2, 2]).await.unwrap();

    ok(&m, &["service", "scale", "web=9"]).await;
    wait_distribution(&m, "web", &[3, 3, 3]).await.unwrap();

    ok(&m, &["service", "scale", "web=1"]).await;
    wait_distribution(&m, "web", &[1]).await.unwrap();
    ok(&m, &["service", "scale", "web=3"]).await;
    wait_distribution(&m, "web", &[1, 1, 1]).await.unwrap();

    // Rolling update, parallelism 1: never more than one slot without a running task.
    ok(
        &m,
        &[
            "service",
            "update",
            "-d",
            "--update-parallelism",
            "1",
            "--image",
            "img:v2",
            "web",
        ],
    )
    .await;
    let worst = std::cell::Cell::new(3);
    eventually("every task on img:v2", WAIT, || async {
        let tasks = json(&m, &["service", "ps", "web"]).await;
        let live: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
            .collect();
        worst.set(worst.get().min(live.len()));
        let v2 = live.iter().filter(|t| t["image"] == "img:v2").count();
        if v2 == 3 {
            Ok(())
        } else {
            Err(format!("{v2} of 3 on v2"))
        }
    })
    .await
    .unwrap();
    let worst = worst.get();
    assert!(
        worst >= 2,
        "parallelism 1 took {} tasks down at once",
        3 - worst
    );

    ok(&m, &["service", "rm", "web"]).await;
    eventually("no live task", WAIT, || async {
        let running: usize = agents.iter().map(|a| a.runtime.running().len()).sum();
        if running == 0 {
            Ok(())
        } else {
            Err(format!("{running} fake containers still running"))
        }
    })
    .await
    .unwrap();
    assert!(json(&m, &["service", "ls"]).await.is_empty());
}

#[tokio::test]
async fn global_service_follows_nodes_joining_and_draining() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let mut agents = three_agents(&m).await;
    ok(
        &m,
        &[
            "service", "create", "-d", "--name", "mon", "--mode", "global", "img:v1",
        ],
    )
    .await;
    wait_distribution(&m, "mon", &[1, 1, 1]).await.unwrap();

    agents.push(HollowAgent::start(
        &m.join_target().await.unwrap(),
        "node-4",
        &[],
    ));
    wait_distribution(&m, "mon", &[1, 1, 1, 1]).await.unwrap();

    ok(&m, &["node", "update", "--availability", "drain", "node-2"]).await;
    eventually("no task on the drained node", WAIT, || async {
        let per = running_per_node(&m, "mon").await;
        if per.len() == 3 && !per.contains_key("node-2") {
            Ok(())
        } else {
            Err(format!("{per:?}"))
        }
    })
    .await
    .unwrap();
    ok(
        &m,
        &["node", "update", "--availability", "active", "node-2"],
    )
    .await;
    wait_distribution(&m, "mon", &[1, 1, 1, 1]).await.unwrap();
}

#[tokio::test]
async fn unplaceable_tasks_wait_with_a_reason_and_are_placed_when_a_node_fits() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let _agents = three_agents(&m).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "east",
            "--replicas",
            "2",
            "--constraint",
            "node.labels.zone==east",
            "img:v1",
        ],
    )
    .await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "big",
            "--reserve-memory",
            "64g",
            "img:v1",
        ],
    )
    .await;
    for (svc, needle) in [("east", "constraint"), ("big", "memory")] {
        eventually(&format!("{svc} pending with a reason"), WAIT, || async {
            let tasks = json(&m, &["service", "ps", svc]).await;
            let msg = tasks
                .first()
                .map(|t| t["message"].as_str().unwrap_or("").to_string());
            match msg {
                Some(msg)
                    if tasks.iter().all(|t| t["state"] == "pending") && msg.contains(needle) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap();
    }
    let cluster = m.join_target().await.unwrap();
    let _east = HollowAgent::start(&cluster, "node-east", &[("zone", "east")]);
    wait_distribution(&m, "east", &[2]).await.unwrap();
    let per = running_per_node(&m, "east").await;
    assert_eq!(per.get("node-east"), Some(&2), "{per:?}");
    let _huge = HollowAgent::start_with(&cluster, "node-huge", &[], 4_000_000_000, 128 << 30);
    wait_distribution(&m, "big", &[1]).await.unwrap();
    assert_eq!(running_per_node(&m, "big").await.get("node-huge"), Some(&1));
}

#[tokio::test]
async fn tasks_of_a_lost_agent_are_replaced_within_the_grace_period() {
    shoal_tests::init();
    let m = ManagerProcess::start(&["--heartbeat-period", "200ms"])
        .await
        .unwrap();
    let mut agents = three_agents(&m).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "6",
            "img:v1",
        ],
    )
    .await;
    wait_distribution(&m, "web", &[2, 2, 2]).await.unwrap();

    let lost = agents.remove(0);
    let mut lost = lost;
    let started = Instant::now();
    lost.stop().await;
    wait_distribution(&m, "web", &[3, 3]).await.unwrap();
    let took = started.elapsed();
    println!(
        "agent lost -> replacements running: {:.2} s (grace 3 x 200 ms)",
        took.as_secs_f64()
    );
    let node = json(&m, &["node", "ls"])
        .await
        .into_iter()
        .find(|n| n["hostname"] == "node-1")
        .unwrap();
    assert_eq!(node["status"], "down");
}

#[tokio::test]
async fn manager_restart_keeps_state_and_agents_reconnect_without_duplicates() {
    shoal_tests::init();
    let mut m = ManagerProcess::start(&[]).await.unwrap();
    let agents = three_agents(&m).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "6",
            "img:v1",
        ],
    )
    .await;
    wait_distribution(&m, "web", &[2, 2, 2]).await.unwrap();
    let before: Vec<String> = json(&m, &["service", "ps", "web"])
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();

    m.restart().await.unwrap();

    assert_eq!(json(&m, &["service", "ls"]).await.len(), 1);
    eventually("3 ready nodes after restart", WAIT, || async {
        let ready = json(&m, &["node", "ls"])
            .await
            .iter()
            .filter(|n| n["status"] == "ready" && n["role"] == "worker")
            .count();
        if ready == 3 {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await
    .unwrap();
    wait_distribution(&m, "web", &[2, 2, 2]).await.unwrap();
    let after: Vec<String> = json(&m, &["service", "ps", "web"])
        .await
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before.len(), after.len());
    for id in &before {
        assert!(after.contains(id), "task {id} lost across the restart");
    }
    let containers: usize = agents.iter().map(|a| a.runtime.container_count()).sum();
    assert_eq!(containers, 6, "no duplicate containers");
}

#[tokio::test]
async fn failed_tasks_restart_after_the_delay_and_not_beyond_max_attempts() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let agents = three_agents(&m).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "flaky",
            "--restart-delay",
            "1s",
            "--restart-max-attempts",
            "2",
            "img:v1",
        ],
    )
    .await;
    wait_distribution(&m, "flaky", &[1]).await.unwrap();

    for attempt in 1..=3 {
        let (agent, task) = eventually("a running task", WAIT, || async {
            for a in &agents {
                if let Some(t) = a.runtime.running().into_iter().next() {
                    return Ok((a, t));
                }
            }
            Err("none running".to_string())
        })
        .await
        .unwrap();
        let failed_at = Instant::now();
        agent.runtime.exit(&task, 1);
        if attempt <= 2 {
            eventually("a replacement running", WAIT, || async {
                let running: Vec<String> =
                    agents.iter().flat_map(|a| a.runtime.running()).collect();
                if running.len() == 1 && running[0] != task {
                    Ok(())
                } else {
                    Err(format!("{running:?}"))
                }
            })
            .await
            .unwrap();
            let took = failed_at.elapsed();
            println!(
                "attempt {attempt}: replacement running after {:.2} s",
                took.as_secs_f64()
            );
            assert!(
                took >= Duration::from_millis(900),
                "restart delay not honoured: {took:?}"
            );
        }
    }
    // Third failure: max attempts reached, nothing replaces it.
    let tasks = json(&m, &["service", "ps", "flaky"]).await;
    eventually("the failure recorded", WAIT, || async {
        let tasks = json(&m, &["service", "ps", "flaky"]).await;
        let failed = tasks.iter().filter(|t| t["state"] == "failed").count();
        if failed == 3 {
            Ok(())
        } else {
            Err(format!("{failed} failed"))
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let running: usize = agents.iter().map(|a| a.runtime.running().len()).sum();
        assert_eq!(
            running, 0,
            "a task was restarted beyond max attempts: {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_one_clear_line_and_changes_nothing() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    ok(
        &m,
        &[
            "service", "create", "-d", "--name", "web", "-p", "8080:80", "img:v1",
        ],
    )
    .await;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--replicas",
                "-1",
                "img",
            ],
            "replicas",
        ),
        (&["service", "create", "-d", "--name", "x", ""], "image"),
        (
            &["service", "create", "-d", "--name", "x", "Not A Ref"],
            "image",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--constraint",
                "node.labels.zone=east",
                "img",
            ],
            "constraint",
        ),
        (
            &[
                "service", "create", "-d", "--name", "x", "--mode", "sideways", "img",
            ],
            "mode",
        ),
        (&["service", "create", "-d", "--name", "web", "img"], "web"),
        (
            &[
                "service", "create", "-d", "--name", "x", "-p", "8080:80", "img",
            ],
            "8080",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--restart-delay",
                "soon",
                "img",
            ],
            "restart-delay",
        ),
        (
            &[
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--reserve-memory",
                "lots",
                "img",
            ],
            "reserve-memory",
        ),
        (&["service", "ls", "--format", "yaml"], "format"),
    ];
    for (args, needle) in cases {
        let err = fails(&m, args).await;
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "shoal {args:?}: expected an error naming {needle:?}, got:\n{err}"
        );
    }
    let services = json(&m, &["service", "ls"]).await;
    assert_eq!(
        services.len(),
        1,
        "bad input must not write anything: {services:?}"
    );
}
