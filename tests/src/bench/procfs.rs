//! What the harness reads of live processes through `/proc` (memory, CPU,
//! page faults), and what it checks and sets for its own process (the open
//! files limit, its threads' priority).

/// A `kB` field (`VmRSS`, `VmHWM`, ...) of a `/proc/PID/status` text, in KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Read a memory field of a live process in MiB (rounded to one decimal).
pub fn proc_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, field).map(|kib| (kib as f64 / 1024.0 * 10.0).round() / 10.0)
}

/// User + system CPU seconds a process has used (`/proc/PID/stat`, 100 Hz ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let utime: f64 = stat_field(pid, 11)?.parse().ok()?;
    let stime: f64 = stat_field(pid, 12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Minor page faults a process has taken: each is a page the kernel had to
/// find (and zero, if fresh) on first touch.
pub fn minor_faults(pid: u32) -> Option<u64> {
    stat_field(pid, 7)?.parse().ok()
}

/// Minor faults between two readings, in MiB of 4 KiB pages.
pub fn faulted_mib(before: u64, after: u64) -> String {
    format!(
        "{:.0}",
        after.saturating_sub(before) as f64 * 4096.0 / f64::from(1 << 20)
    )
}

/// Field `n` of `/proc/PID/stat`, counted from "state" (0), which follows
/// the command name (which may hold spaces).
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(n).map(str::to_string)
}

/// Each hollow node holds a socket in this process, and the manager one more:
/// say so plainly rather than failing with "too many open files" halfway.
pub fn check_open_files(nodes: usize) -> anyhow::Result<()> {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()?;
    let limit: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(usize::MAX);
    anyhow::ensure!(
        limit >= nodes + 512,
        "--nodes {nodes} needs at least {} open files, the limit is {limit}: raise it with `ulimit -n`",
        nodes + 512
    );
    Ok(())
}

/// Set every thread of this process to niceness `nice` (Linux keeps it
/// per thread; threads started later inherit it from their parent).
pub fn lower_own_priority(nice: i32) -> anyhow::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let name = entry?.file_name();
        let tid = name
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        let Some(tid) = tid else { continue };
        match rustix::process::setpriority_process(Some(tid), nice) {
            Ok(()) => {}
            // A thread that ended since the directory was read.
            Err(rustix::io::Errno::SRCH) => {}
            Err(err) => anyhow::bail!("cannot set thread {tid:?} to nice {nice}: {err}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_status_fields() {
        let status = "Name:\tshoal\nVmPeak:\t  900 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(204_800));
        assert_eq!(status_kib(status, "VmRSS"), Some(102_400));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_seconds_of_this_process() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn touching_fresh_memory_counts_minor_faults() {
        let pid = std::process::id();
        let before = minor_faults(pid).expect("readable");
        let mut pages = vec![0u8; 16 << 20];
        for i in (0..pages.len()).step_by(4096) {
            pages[i] = 1;
        }
        std::hint::black_box(&pages);
        // 4,096 faults of 4 KiB pages; 8 if the kernel hands out 2 MiB ones.
        assert!(minor_faults(pid).expect("readable") >= before + 8);
    }

    #[test]
    fn lowering_priority_reaches_every_thread() {
        // nextest runs each test in a process of its own; niceness only rises.
        let before = rustix::process::getpriority_process(None).expect("readable");
        let nice = (before + 2).min(19);
        let (started, stop) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                started.wait();
                stop.wait();
                rustix::process::getpriority_process(None).expect("readable")
            });
            started.wait();
            lower_own_priority(nice).expect("allowed: it only lowers");
            stop.wait();
            assert_eq!(
                other.join().expect("thread"),
                nice,
                "a thread already running"
            );
        });
        assert_eq!(
            rustix::process::getpriority_process(None).expect("readable"),
            nice,
            "this thread"
        );
    }
}
