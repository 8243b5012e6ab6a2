//! Specs a hostile user sends, against a real `shoal manager` process: replica
//! counts far over the limit through the CLI and the API, a store that already
//! holds an over-limit service (as an older version could have written), and
//! `service ps` of a service whose tasks outgrow one reply.

use std::time::Duration;

use shoal_manager::ManagerConfig;
use shoal_proto::validate::MAX_REPLICAS;
use shoal_proto::{
    ContainerSpec, CreateServiceRequest, ListServicesRequest, ListTasksRequest, Service,
    ServiceSpec, TaskSpec,
};
use shoal_tests::group::{cli, ok};
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas,
        task: Some(TaskSpec::for_image("shoal-test/busybox").into()),
        ..Default::default()
    }
}

async fn service_count(m: &ManagerProcess) -> usize {
    let mut c = m.socket_control().await.expect("control socket");
    c.list_services(ListServicesRequest {})
        .await
        .expect("list services")
        .into_inner()
        .services
        .len()
}

/// The service's `error` in `service inspect`, if it has one.
async fn error_of(m: &ManagerProcess, service: &str) -> Option<String> {
    let out = ok(m, &["service", "inspect", service]).await;
    let inspected: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    let one = if inspected.is_array() {
        &inspected[0]
    } else {
        &inspected
    };
    one["error"].as_str().map(str::to_string)
}

#[tokio::test]
async fn replica_counts_over_the_limit_are_refused_and_the_manager_stays_up() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();

    let (success, _, stderr) = cli(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "huge",
            "--replicas",
            "1000000000",
            "shoal-test/busybox",
        ],
    )
    .await;
    assert!(!success, "a billion replicas are refused");
    assert!(stderr.contains("replicas"), "names the field: {stderr}");
    assert!(
        stderr.contains(&MAX_REPLICAS.to_string()),
        "names the limit: {stderr}"
    );

    let mut c = m.socket_control().await.unwrap();
    for replicas in [1_000_000_000, 1 << 31, 100_000_000, u64::MAX, 1_000_000] {
        let err = c
            .create_service(CreateServiceRequest {
                spec: Some(spec("huge", replicas)),
            })
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{replicas}");
        assert!(
            err.message().starts_with("replicas: "),
            "{replicas}: {}",
            err.message()
        );
    }
    assert_eq!(service_count(&m).await, 0, "nothing was written");

    // The manager serves on: a service of a sane size is created and gets its tasks.
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "fine",
            "--replicas",
            "3",
            "shoal-test/busybox",
        ],
    )
    .await;
    eventually("the sane service's tasks", WAIT, || async {
        let mut c = m.socket_control().await.map_err(|e| e.to_string())?;
        let n = c
            .list_tasks(ListTasksRequest {
                services: vec!["fine".into()],
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .tasks
            .len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} tasks"))
        }
    })
    .await
    .unwrap();
}

/// Write `service` into the store of the stopped manager at `data_dir` the
/// way an older version could have: straight through Raft, no API checks.
async fn write_around_the_api(data_dir: &std::path::Path, service: Service) {
    shoal_manager::testing::write_unchecked(&ManagerConfig::new(data_dir), vec![service])
        .await
        .expect("stored");
}

#[tokio::test]
async fn a_manager_starts_on_a_store_that_holds_an_over_limit_service() {
    shoal_tests::init();
    let mut m = ManagerProcess::start(&[]).await.unwrap();
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "calm",
            "--replicas",
            "2",
            "shoal-test/busybox",
        ],
    )
    .await;
    m.terminate().unwrap();
    let huge = Service {
        id: shoal_proto::ids::new_id(),
        spec: Some(spec("huge", 1_000_000_000)),
        spec_version: 1,
        ..Default::default()
    };
    write_around_the_api(&m.data_dir, huge).await;

    // It starts, and starts again: no crash loop from what it stores.
    m.restart().await.unwrap();
    let error = eventually("the stored service marked with its error", WAIT, || async {
        error_of(&m, "huge")
            .await
            .ok_or_else(|| "no error yet".to_string())
    })
    .await
    .unwrap();
    assert!(
        error.contains("replicas: "),
        "the error names the field: {error}"
    );
    let (success, _, stderr) = cli(&m, &["service", "ps", "huge"]).await;
    assert!(success);
    assert!(
        stderr.contains("service huge: the stored spec is not valid (replicas: "),
        "{stderr}"
    );
    let listed = ok(&m, &["service", "ls"]).await;
    assert!(
        listed.contains("calm") && listed.contains("huge"),
        "{listed}"
    );
    m.restart().await.unwrap();
    assert_eq!(service_count(&m).await, 2);

    // It can be fixed, and then it is served; or removed.
    ok(&m, &["service", "scale", "-d", "huge=2"]).await;
    eventually(
        "the fixed service gets its tasks and loses its mark",
        WAIT,
        || async {
            let error = error_of(&m, "huge").await;
            let tasks = ok(&m, &["service", "ps", "-q", "huge"]).await;
            let n = tasks.lines().count();
            if error.is_none() && n == 2 {
                Ok(())
            } else {
                Err(format!("{n} tasks, error {error:?}"))
            }
        },
    )
    .await
    .unwrap();
    ok(&m, &["service", "rm", "huge"]).await;
    assert_eq!(service_count(&m).await, 1);
}

#[tokio::test]
async fn service_ps_lists_a_service_whose_tasks_outgrow_one_reply() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    // 40 variables of 1 KB: each task carries about 41 KB, so 150 of them
    // (6 MB) are more than a client takes in one 4 MiB reply.
    let mut big = spec("big", 150);
    let container: &mut ContainerSpec = big.task.as_mut().unwrap().container.as_mut().unwrap();
    container.env = (0..40)
        .map(|i| format!("V{i}={}", "x".repeat(1000)))
        .collect();
    let mut c = m.socket_control().await.unwrap();
    c.create_service(CreateServiceRequest { spec: Some(big) })
        .await
        .unwrap();
    eventually("150 tasks listed by service ps", WAIT, || async {
        let (success, stdout, stderr) = cli(&m, &["service", "ps", "-q", "big"]).await;
        let n = stdout.lines().count();
        if success && n == 150 {
            Ok(())
        } else {
            Err(format!("{n} tasks; {stderr}"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oversized_requests_and_values_are_refused_in_a_few_words() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let pid = m.pid().unwrap();
    let mut c = m
        .socket_control()
        .await
        .unwrap()
        .max_encoding_message_size(usize::MAX);

    // 200 MB in one request: refused before it is read whole.
    let mut huge = spec("huge", 1);
    huge.labels.insert("blob".into(), "x".repeat(200_000_000));
    let err = c
        .create_service(CreateServiceRequest { spec: Some(huge) })
        .await
        .expect_err("200 MB is far over the request limit");
    assert!(
        err.message()
            .contains(&shoal_proto::validate::MAX_REQUEST_BYTES.to_string()),
        "names the limit: {}",
        err.message()
    );
    let peak = shoal_tests::bench::procfs::proc_mib(pid, "VmHWM").unwrap();
    assert!(
        peak < 150.0,
        "the manager never held the request: peak {peak} MiB"
    );

    // A 131,000-character name: the error quotes a short prefix and the size.
    let err = c
        .create_service(CreateServiceRequest {
            spec: Some(spec(&"n".repeat(131_000), 1)),
        })
        .await
        .expect_err("the name is far too long");
    assert!(err.message().starts_with("name: "), "{}", err.message());
    assert!(err.message().contains("131000 bytes"), "{}", err.message());
    assert!(err.message().len() < 256, "{} bytes", err.message().len());
    assert_eq!(service_count(&m).await, 0, "nothing was written");
}
