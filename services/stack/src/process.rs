//! Child processes under a watchdog, and port helpers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// A local component could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A program the stack needs is not installed.
    #[error("{what} not found: {hint}")]
    Missing {
        /// The missing program or file.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A component did not come up in time.
    #[error("{name} did not start within {waited:?}; see {log}")]
    NotReady {
        /// The component.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: String,
    },
    /// A helper program ran but failed.
    #[error("{what} failed: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// Its exit status and error output.
        detail: String,
    },
    /// A component exited while starting.
    #[error("{name} exited while starting; see {log}")]
    Exited {
        /// The component.
        name: String,
        /// Its log file.
        log: String,
    },
}

impl StackError {
    pub(crate) fn io(context: &str, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_owned(),
            source,
        }
    }

    pub(crate) fn missing(what: &str, hint: &str) -> Self {
        Self::Missing {
            what: what.to_owned(),
            hint: hint.to_owned(),
        }
    }
}

// The watchdog: runs the program in the background and exits with it. A
// guard waits until our end of the pipe closes (this process stopped or
// exited), then stops the program with SIGTERM, and SIGKILL if it has not
// exited 10 s later.
const WATCHDOG: &str = r#"
exec 3<&0
"$@" </dev/null &
child=$!
(
  read -r _ignored <&3
  kill -TERM "$child" 2>/dev/null
  i=0
  while kill -0 "$child" 2>/dev/null; do
    i=$((i+1))
    if [ "$i" -gt 100 ]; then kill -KILL "$child" 2>/dev/null; break; fi
    sleep 0.1
  done
) &
guard=$!
exec 3<&-
wait "$child"
status=$?
kill "$guard" 2>/dev/null
exit "$status"
"#;

/// A running component. Stopped (SIGTERM, then SIGKILL) when dropped or when
/// this process exits.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    watchdog: Child,
    pipe: Option<ChildStdin>,
    log: String,
}

impl ChildProcess {
    /// Starts `program args…` in `dir`, its output appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path, log: &Path) -> Result<Self, StackError> {
        Self::spawn_with_env(name, program, args, &[], dir, log)
    }

    /// [`ChildProcess::spawn`] with `env` set on top of this process's
    /// environment.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        dir: &Path,
        log: &Path,
    ) -> Result<Self, StackError> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StackError::io("create log dir", e))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| StackError::io("open log", e))?;
        let err = out.try_clone().map_err(|e| StackError::io("open log", e))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C does not reach it.
            .process_group(0)
            // Tansu reads these from the environment; never inherit them.
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().map(|(name, value)| (name, value)));
        let mut watchdog = command
            .spawn()
            .map_err(|e| StackError::io(&format!("start {name} ({})", program.display()), e))?;
        let pipe = watchdog.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            watchdog,
            pipe,
            log: log.display().to_string(),
        })
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process group: the component and everything it started.
    pub fn group(&self) -> u32 {
        self.watchdog.id()
    }

    /// The CPU time (user + system) the component has used so far, all its
    /// processes and threads.
    pub fn cpu(&self) -> Duration {
        group_cpu(self.group())
    }

    /// Whether the component is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.watchdog.try_wait(), Ok(None))
    }

    /// Stops the component gracefully and waits for it (at most ~12 s).
    pub fn stop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            // A newline wakes the watchdog even if the pipe close is delayed.
            let _ = pipe.write_all(b"\n");
        }
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            if !matches!(self.watchdog.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(self.watchdog.id());
        let _ = self.watchdog.wait();
    }

    /// Sends `signal` (by name: `STOP`, `CONT`, …) to the component's
    /// process group.
    pub fn signal(&self, signal: &str) -> Result<(), StackError> {
        let what = format!("kill -s {signal} {}", self.name);
        let status = signal_group(self.group(), signal).map_err(|e| StackError::io(&what, e))?;
        if status.success() {
            Ok(())
        } else {
            Err(StackError::Failed {
                what,
                detail: status.to_string(),
            })
        }
    }

    /// Kills the component at once with SIGKILL (a crash, for tests).
    pub fn kill(&mut self) {
        kill_group(self.watchdog.id());
        let _ = self.watchdog.wait();
        self.pipe = None;
    }

    pub(crate) fn log(&self) -> &str {
        &self.log
    }
}

/// SIGKILL to the process group `group`.
fn kill_group(group: u32) {
    let _ = signal_group(group, "KILL");
}

/// `signal` (by name: `KILL`, `STOP`, `CONT`) to the process group `group`.
/// procps-ng's `kill` (4.0) reads `kill -KILL -<pgid>` as two options and
/// signals nothing, successfully: the signal is named with `-s` and the
/// group after `--`.
fn signal_group(group: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-s", signal, "--"])
        .arg(format!("-{group}"))
        .status()
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.pipe.is_some() {
            self.stop();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1, and not handed out
/// before by this process.
///
/// Picked below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
/// 32768–60999 by default), not by binding port 0: the kernel takes a
/// port-0 listener's port from that range, the same one it takes the local
/// end of every outgoing connection from, so between this check and the
/// child binding the port, one of the many connections the stack opens
/// (to Tansu, DynamoDB Local, the services) could take it, and the child
/// then failed with "Address already in use" (seen once, a fault-suite
/// persister). Falls back to port 0 when the range leaves no room below.
pub fn free_port() -> Result<u16, StackError> {
    let (low, high) = (LISTEN_FROM, *EPHEMERAL_START);
    if high > low {
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let span = u64::from(high - low);
        for attempt in 0..256u64 {
            let port = low + u16::try_from(random(attempt) % span).unwrap_or(0);
            if handed_out.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return Ok(port);
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| StackError::io("find a free port", e))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| StackError::io("find a free port", e))
}

/// The lowest port [`free_port`] picks.
const LISTEN_FROM: u16 = 10_000;

/// Linux's default first ephemeral port.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// Ports [`free_port`] handed out in this process (tests start many stacks
/// at once, each bind check releases its port).
static HANDED_OUT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
    std::sync::LazyLock::new(Default::default);

/// The first port of the kernel's ephemeral range (read once).
static EPHEMERAL_START: std::sync::LazyLock<u16> =
    std::sync::LazyLock::new(|| ephemeral_start().unwrap_or(DEFAULT_EPHEMERAL_START));

/// The first port of the kernel's ephemeral range, when it says.
fn ephemeral_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// A pseudo-random number, different per call and per process.
fn random(attempt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one((std::process::id(), attempt, Instant::now()))
}

/// Waits until 127.0.0.1:`port` accepts connections, or the child exits.
pub fn wait_for_port(name: &str, port: u16, timeout: Duration, child: &mut ChildProcess) -> Result<(), StackError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !child.is_running() {
            return Err(StackError::Exited {
                name: name.to_owned(),
                log: child.log().to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StackError::NotReady {
        name: name.to_owned(),
        waited: timeout,
        log: child.log().to_owned(),
    })
}

/// Waits until an HTTP request to 127.0.0.1:`port` gets any HTTP answer.
pub(crate) fn wait_for_http_answer(name: &str, port: u16, timeout: Duration) -> Result<(), StackError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
            let mut answer = [0u8; 12];
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_exact(&mut answer).is_ok()
                && answer.starts_with(b"HTTP/")
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(StackError::NotReady {
        name: name.to_owned(),
        waited: timeout,
        log: String::new(),
    })
}

/// The processes of the process group `group`.
fn members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat_field(&stat, 5) == Some(group))
        })
        .collect()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/<pid>/stat` line, from
/// the state (field 3) on: `pid (comm) state ppid pgrp …`, and comm may
/// hold spaces and parentheses.
fn stat_field(stat: &str, n: usize) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// The resident memory in bytes of the process group `group`'s largest
/// process (the component, not its watchdog shell); `None` when it is gone.
pub fn group_rss(group: u32) -> Option<u64> {
    members(group)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            Some(kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()? * 1024)
        })
        .max()
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (`USER_HZ`,
/// 100 on every Linux architecture this runs on).
const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user + system) the process group `group` has used so far,
/// all its processes and threads.
pub fn group_cpu(group: u32) -> Duration {
    let ticks: u64 = members(group)
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some(u64::from(stat_field(&stat, 14)?) + u64::from(stat_field(&stat, 15)?))
        })
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// What the threads of one kind in a process group have used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadUse {
    /// Threads of this kind alive now.
    pub threads: u32,
    /// CPU time, user and system.
    pub cpu: Duration,
    /// Times they went to sleep (voluntary context switches): roughly how
    /// often they were woken.
    pub sleeps: u64,
    /// Times the scheduler took the CPU from them (involuntary switches).
    pub preempted: u64,
}

impl ThreadUse {
    /// The use from `earlier` to `self`. A thread that ended in between
    /// takes its time out of the earlier figure only, so the difference
    /// saturates at zero rather than going negative.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            threads: self.threads,
            cpu: self.cpu.saturating_sub(earlier.cpu),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
            preempted: self.preempted.saturating_sub(earlier.preempted),
        }
    }
}

/// The kind of a thread named `name`: its name with every run of digits
/// made `#`, so that librdkafka's `rdk:broker1` and `rdk:broker2` are one
/// kind, `rdk:broker#`.
pub fn thread_kind(name: &str) -> String {
    let mut kind = String::with_capacity(name.len());
    for c in name.chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !kind.ends_with('#') {
            kind.push('#');
        }
    }
    kind
}

/// What every kind of thread of the process group `group` has used so
/// far (`/proc/<pid>/task/<tid>/{comm,stat,status}`), by [`thread_kind`].
/// Threads that ended are not counted.
pub fn group_threads(group: u32) -> std::collections::BTreeMap<String, ThreadUse> {
    let mut kinds = std::collections::BTreeMap::<String, ThreadUse>::new();
    for pid in members(group) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let (Ok(comm), Ok(stat), Ok(status)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("stat")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let ticks = u64::from(stat_field(&stat, 14).unwrap_or(0)) + u64::from(stat_field(&stat, 15).unwrap_or(0));
            let switches = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let kind = kinds.entry(thread_kind(comm.trim_end())).or_default();
            kind.threads += 1;
            kind.cpu += Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
            kind.sleeps += switches("voluntary_ctxt_switches:");
            kind.preempted += switches("nonvoluntary_ctxt_switches:");
        }
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::{stat_field, thread_kind};

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4240 4240 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(stat, 5), Some(4240));
        assert_eq!(stat_field(stat, 14), Some(1234));
        assert_eq!(stat_field(stat, 15), Some(567));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn threads_named_alike_but_for_digits_are_one_kind() {
        assert_eq!(thread_kind("rdk:broker1"), "rdk:broker#");
        assert_eq!(thread_kind("rdk:broker-12"), "rdk:broker-#");
        assert_eq!(thread_kind("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(thread_kind("a1b22c"), "a#b#c");
        assert_eq!(thread_kind(""), "");
    }

    #[test]
    fn this_process_has_its_own_thread_counted() {
        let group = super::stat_field(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default(), 5)
            .unwrap_or_else(|| panic!("no process group in /proc/self/stat"));
        let spent = std::time::Instant::now();
        let mut x = 0u64;
        while spent.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let kinds = super::group_threads(group);
        assert!(kinds.values().map(|k| k.threads).sum::<u32>() >= 1, "{kinds:?}");
        assert!(
            kinds.values().map(|k| k.cpu).sum::<std::time::Duration>() > std::time::Duration::ZERO,
            "50 ms of spinning used no CPU: {kinds:?}"
        );
    }

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let below = *super::EPHEMERAL_START;
        let ports: Vec<u16> = (0..200)
            .map(|_| super::free_port().unwrap_or_else(|e| panic!("no free port: {e}")))
            .collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        if below > super::LISTEN_FROM {
            assert!(
                ports.iter().all(|p| (super::LISTEN_FROM..below).contains(p)),
                "outside {}..{below}: {ports:?}",
                super::LISTEN_FROM
            );
        }
        // Held at once, as a stack holds them once its processes listen.
        let listeners: Vec<std::net::TcpListener> = ports
            .iter()
            .map(|port| {
                std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap_or_else(|e| panic!("port {port}: {e}"))
            })
            .collect();
        assert_eq!(listeners.len(), 200);
    }
}
