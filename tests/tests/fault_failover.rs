//! Issue 6's fault suite, failover: three `shoal manager` processes on
//! loopback ports (debug builds, sharing the machine with the other tests);
//! the leader is killed with SIGKILL twenty times, and each time the test
//! times how long until a write sent after the kill, through a survivor, is
//! acknowledged. It prints p50 and p99 of those times and asserts only that
//! every failover completed; `shoal-bench failover` measures the same on
//! release builds (docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use shoal_proto::CreateServiceRequest;
use shoal_tests::group::*;
use shoal_tests::wait::eventually;

const TRIALS: usize = 20;
/// A write not answered within this is abandoned and another one sent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two write attempts (the resolution of the measurement).
const RETRY: Duration = Duration::from_millis(10);

#[tokio::test]
async fn the_leader_killed_twenty_times_is_replaced_and_writes_resume() {
    let mut managers = three_managers().await;
    let mut took = Vec::new();
    for trial in 0..TRIALS {
        let leader = eventually("every manager to follow one leader", WAIT, || async {
            let mut seen = Vec::new();
            for m in &managers {
                seen.push(cluster_info(m).await?.leader_addr);
            }
            let agreed = !seen[0].is_empty() && seen.iter().all(|a| *a == seen[0]);
            match managers.iter().position(|m| m.addr.to_string() == seen[0]) {
                Some(leader) if agreed => Ok(leader),
                _ => Err(format!("leaders seen: {seen:?}")),
            }
        })
        .await
        .unwrap();

        let killed = Instant::now();
        managers[leader].kill();
        let survivors: Vec<usize> = (0..managers.len()).filter(|i| *i != leader).collect();
        let mut attempt = 0;
        let elapsed = loop {
            let m = &managers[survivors[attempt % survivors.len()]];
            attempt += 1;
            let request = CreateServiceRequest {
                spec: Some(tiny_service(format!("t{trial}-{attempt}"))),
            };
            if let Ok(mut c) = m.socket_control().await
                && let Ok(Ok(_)) =
                    tokio::time::timeout(WRITE_TIMEOUT, c.create_service(request)).await
            {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < WAIT,
                "no write accepted {WAIT:?} after killing the leader (trial {trial})\n{}",
                m.log()
            );
            tokio::time::sleep(RETRY).await;
        };
        println!("trial {trial}: a write accepted {elapsed:?} after the kill");
        took.push(elapsed);
        managers[leader].restart().await.unwrap();
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    println!(
        "failover over {TRIALS} trials (debug builds): p50 {p50:?}, p99 {p99:?}, max {:?}",
        took[took.len() - 1]
    );
}
