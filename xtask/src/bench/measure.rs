//! Wall time, CPU time and peak RSS of commands and of long-running daemons.
//!
//! A command's CPU time and peak RSS come from `wait4`: the kernel adds the
//! usage of every descendant the command reaped, and reports the largest
//! resident set any of them had. A daemon (BuildKit's dockerd) is measured
//! from `/proc`: CPU as the delta of its and its children's counters, RSS by
//! sampling, since its high-water mark cannot be reset between cases.

use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a daemon's RSS is sampled.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// How much of a failing command's log an error shows.
const LOG_TAIL_BYTES: u64 = 4000;

/// What one measured piece of work used.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Elapsed time, in seconds.
    pub wall: f64,
    /// User plus system CPU time, in seconds.
    pub cpu: f64,
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
}

impl Usage {
    /// Two pieces of work done one after the other: times add up, the peak
    /// is the larger one.
    pub fn then(self, next: Usage) -> Usage {
        Usage {
            wall: self.wall + next.wall,
            cpu: self.cpu + next.cpu,
            max_rss_kib: self.max_rss_kib.max(next.max_rss_kib),
        }
    }
}

/// Runs `cmd` with its output appended to `log`, and returns what it and
/// its reaped descendants used; fails with the log's tail unless it exits 0.
pub fn run(cmd: &mut Command, log: &Path) -> Result<Usage> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open the log {}", log.display()))?;
    let start_offset = out.metadata()?.len();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // Without a hook, Rust spawns with posix_spawn, which shares xtask's
    // memory map until exec; the kernel then counts that map's high-water
    // RSS (xtask's own peak, raised by an in-process server buffering a
    // response) as the child's. A hook makes it fork: the child starts
    // from xtask's current RSS, a few MiB.
    // SAFETY: the hook does nothing, which is safe between fork and exec.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let start = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let pid = libc::pid_t::try_from(child.id()).context("a pid that does not fit pid_t")?;
    let (status, rusage) = wait4(pid)?;
    let wall = start.elapsed().as_secs_f64();
    // `wait4` reaped the child: `Child` must not wait for it again, and
    // dropping it only closes handles.
    drop(child);
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{} failed ({}); the end of its log {}:\n{}",
            describe(cmd),
            describe_status(status),
            log.display(),
            log_tail(log, start_offset)
        );
    }
    Ok(Usage {
        wall,
        cpu: timeval_seconds(rusage.ru_utime) + timeval_seconds(rusage.ru_stime),
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
    })
}

fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both pointers are to live locals of the right types.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if reaped == pid {
            return Ok((status, rusage));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error).with_context(|| format!("wait4 for pid {pid} failed"));
        }
    }
}

fn timeval_seconds(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    format!("`{line}`")
}

/// The last [`LOG_TAIL_BYTES`] the command wrote to `log` after `from`.
fn log_tail(log: &Path, from: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(log)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(
            from.max(len.saturating_sub(LOG_TAIL_BYTES)),
        ))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()))
}

/// The CPU clock ticks a process and its reaped children used, from the
/// text of `/proc/<pid>/stat`: utime + stime + cutime + cstime.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14-17 of proc(5), counted from field 3 (the state) here.
    let mut total = 0u64;
    for field in fields.get(11..15)? {
        total += field.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The parent pid (field 4 of proc(5)) in the text of `/proc/<pid>/stat`.
pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix("VmRSS:")?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The CPU seconds `pids` and their reaped children have used so far.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    let mut ticks = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        ticks += parse_stat_ticks(&stat).with_context(|| format!("malformed {path}: {stat}"))?;
    }
    Ok(ticks as f64 / ticks_per_second as f64)
}

/// The direct children of `pid` whose command name is `comm`.
pub fn children_named(pid: u32, comm: &str) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let entry = entry?;
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look: a vanished one is no child.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(name, _)| name);
        if parse_stat_ppid(&stat) == Some(pid) && name == Some(comm) {
            found.push(child);
        }
    }
    Ok(found)
}

/// Samples the summed `VmRSS` of some processes every
/// [`RSS_SAMPLE_INTERVAL`] until stopped, keeping the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `pids`.
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            loop {
                let total: u64 = pids
                    .iter()
                    .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
                    .filter_map(|status| parse_vm_rss_kib(&status))
                    .sum();
                peak = peak.max(total);
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                thread::sleep(RSS_SAMPLE_INTERVAL);
            }
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling and returns the peak, in KiB.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (docker d (x)) S 1 4242 4242 0 -1 4194560 \
        2934 0 0 0 150 37 12 3 20 0 12 0 3456 1000000 2000 18446744073709551615";

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        assert_eq!(parse_stat_ticks(STAT), Some(150 + 37 + 12 + 3));
        assert_eq!(parse_stat_ppid(STAT), Some(1));
        assert_eq!(parse_stat_ticks("1 (x) S 0 1"), None);
        assert_eq!(parse_stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tdockerd\nVmHWM:\t  204800 kB\nVmRSS:\t   81234 kB\nThreads:\t12\n";
        assert_eq!(parse_vm_rss_kib(status), Some(81_234));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn runs_add_up_and_peaks_do_not() {
        let a = Usage {
            wall: 1.5,
            cpu: 1.0,
            max_rss_kib: 300,
        };
        let b = Usage {
            wall: 0.5,
            cpu: 2.0,
            max_rss_kib: 200,
        };
        assert_eq!(
            a.then(b),
            Usage {
                wall: 2.0,
                cpu: 3.0,
                max_rss_kib: 300
            }
        );
    }

    #[test]
    fn a_command_is_measured_and_a_failure_shows_its_log() {
        let dir = std::env::temp_dir().join(format!("xtask-measure-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        // A busy loop long enough to register CPU time in a child of sh.
        let usage = run(
            Command::new("sh").args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]),
            &log,
        )
        .unwrap();
        assert!(
            usage.cpu > 0.0 && usage.wall >= usage.cpu * 0.5,
            "{usage:?}"
        );
        assert!(usage.max_rss_kib > 100, "{usage:?}");
        let error = run(
            Command::new("sh").args(["-c", "echo the reason >&2; exit 3"]),
            &log,
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exit code 3"), "{message}");
        assert!(message.contains("the reason"), "{message}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_command_does_not_inherit_the_peak_rss_of_xtask() {
        let dir = std::env::temp_dir().join(format!("xtask-measure-rss-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Raise this process's high-water RSS far above any shell's.
        let touched = vec![1u8; 256 << 20];
        assert_eq!(std::hint::black_box(&touched)[123_456], 1);
        drop(touched);
        let usage = run(&mut Command::new("true"), &dir.join("log")).unwrap();
        assert!(usage.max_rss_kib < 64 << 10, "{usage:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
