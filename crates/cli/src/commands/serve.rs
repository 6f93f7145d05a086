//! `qm-ipc serve`: the gateway.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qm_ipc_server::config::RateLimit;
use qm_ipc_server::config::{default_provider_path, PROVIDER};
use qm_ipc_server::provider_thread::{parse_cpu_list, ThreadPlacement};
use qm_ipc_server::{Config, Gateway, Limits, StartError};

use super::{range, socket_or_default, termination, CommandError};
use crate::demo;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket for ASIL-side providers [default without socket activation:
    /// /run/qm-ipc/provider.socket as root]. Never mount it into QM.
    #[arg(long, value_name = "PATH")]
    provider_socket: Option<PathBuf>,
    /// Do not bind a provider socket (providers then run in-process only,
    /// as with --demo).
    #[arg(long, conflicts_with = "provider_socket")]
    no_provider_socket: bool,
    /// Access policy (TOML) instead of the built-in one; reloaded on
    /// SIGHUP. See docs/policy.md.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// ASIL varlink services to serve behind the gateway (TOML: one
    /// [[service]] with interface and socket each). See docs/design.md.
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,
    /// Typed topics (TOML: one [[topic]] with name and type each, the
    /// type's interface in the file named after it beside this one);
    /// reloaded on SIGHUP. See docs/design.md.
    #[arg(long, value_name = "FILE")]
    topics: Option<PathBuf>,
    /// Also run the built-in demo provider (vehicle.speed at 10 Hz and the
    /// log of the client's time).
    #[arg(long)]
    demo: bool,
    /// Nice value of the ASIL thread (which serves the provider socket),
    /// -20 to 19; below the current value needs CAP_SYS_NICE.
    #[arg(long, value_name = "NICE", allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-20..=19))]
    provider_nice: Option<i32>,
    /// SCHED_FIFO priority of the ASIL thread, 1 to 99; needs CAP_SYS_NICE.
    #[arg(long, value_name = "PRIORITY", value_parser = clap::value_parser!(i32).range(1..=99))]
    provider_rt_priority: Option<i32>,
    /// CPUs the ASIL thread may run on, as the kernel lists them: 1, 0,2,
    /// 2-3.
    #[arg(long, value_name = "LIST")]
    provider_cpus: Option<String>,
    /// How the thread that accepts QM connections is scheduled: normal, or
    /// idle (SCHED_IDLE: a QM connect storm then takes only CPU nothing
    /// else wants). Idle is for QM in a CPU cgroup of its own (the qm
    /// unit's CPUWeight=), as `generate asil-to-qm` sets it; where QM
    /// peers share the gateway's cgroup, a busy one would starve the
    /// accepts.
    #[arg(long, value_name = "SCHED", default_value = "normal", value_parser = ["idle", "normal"])]
    qm_accept: String,
    /// Nice value of the held thread, which serves the QM containers a
    /// bound held back (see --qm-held-ms), 0 to 19; below the current
    /// value needs CAP_SYS_NICE. (Its scheduler slice, 4 ms, is longer
    /// than the kernel's default, so that a thread with the default or a
    /// shorter one preempts it on waking.)
    #[arg(long, value_name = "NICE", default_value_t = qm_ipc_server::held_thread::DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    qm_held_nice: i32,
    /// Scheduler slice of the QM and ASIL threads, in microseconds (Linux
    /// 6.12's custom slice, 100 to 3999, below the held thread's; earlier
    /// kernels ignore it). A short one lets them preempt the held thread,
    /// and any process with the kernel's default slice, as soon as they
    /// wake. 0: the kernel's default.
    #[arg(long, value_name = "US", default_value_t = 100, value_parser = serving_slice)]
    serving_slice_us: u64,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The gateway's bounds; every default is safe for production.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Largest frame a peer may send, in bytes.
    #[arg(long, default_value_t = Limits::default().max_frame, value_name = "BYTES", value_parser = range::<usize>(256, 64 * 1024 * 1024))]
    max_frame: usize,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = Limits::default().max_connections, value_name = "N", value_parser = range::<usize>(1, 65_536))]
    max_connections: usize,
    /// Connections served at once on the provider (ASIL) socket, a budget
    /// QM connections never use.
    #[arg(long, default_value_t = Limits::default().max_provider_connections, value_name = "N", value_parser = range::<usize>(1, 4096))]
    max_provider_connections: usize,
    /// Close a QM connection that holds nothing (no subscription, no
    /// call) and sends nothing for this long, in milliseconds. 0: never.
    #[arg(long, default_value_t = Limits::default().idle_timeout.map_or(0, |d| d.as_millis() as u64), value_name = "MS", value_parser = range::<u64>(0, 86_400_000))]
    idle_timeout_ms: u64,
    /// Connections one QM peer (its container: cgroup, else SELinux label,
    /// else uid) may hold; more are refused with LimitExceeded.
    #[arg(long, default_value_t = Limits::default().max_connections_per_peer, value_name = "N", value_parser = range::<usize>(1, 65_536))]
    max_connections_per_peer: usize,
    /// Distinct topics kept (QM's topics together: 75% of it; the rest is
    /// the ASIL side's).
    #[arg(long, default_value_t = Limits::default().max_topics, value_name = "N", value_parser = range::<usize>(1, 1_000_000))]
    max_topics: usize,
    /// Total bytes of all topics' last values (QM's together: 75%).
    #[arg(long, default_value_t = Limits::default().max_retained_bytes, value_name = "BYTES", value_parser = range::<usize>(1, 1 << 32))]
    max_retained_bytes: usize,
    /// Topics one QM peer may create.
    #[arg(long, default_value_t = Limits::default().max_topics_per_peer, value_name = "N", value_parser = range::<usize>(0, 1_000_000))]
    max_topics_per_peer: usize,
    /// Bytes of last values one QM peer may hold.
    #[arg(long, default_value_t = Limits::default().max_retained_bytes_per_peer, value_name = "BYTES", value_parser = range::<usize>(0, 1 << 32))]
    max_retained_bytes_per_peer: usize,
    /// Calls to ASIL services one QM peer may have in flight at once.
    #[arg(long, default_value_t = Limits::default().max_calls_per_peer, value_name = "N", value_parser = range::<usize>(1, 65_536))]
    max_calls_per_peer: usize,
    /// Topic patterns one subscription may name.
    #[arg(long, default_value_t = Limits::default().max_subscription_patterns, value_name = "N", value_parser = range::<usize>(1, 4096))]
    max_subscription_patterns: usize,
    /// Samples queued per subscriber before the newest value per topic
    /// replaces older ones.
    #[arg(long, default_value_t = Limits::default().subscription_queue, value_name = "N", value_parser = range::<usize>(1, 1_000_000))]
    subscription_queue: usize,
    /// Reply bytes (and, separately, sample bytes) queued per connection.
    #[arg(long, default_value_t = Limits::default().max_queued_bytes, value_name = "BYTES", value_parser = range::<usize>(1024, 1 << 32))]
    max_queued_bytes: usize,
    /// How long a call to an ASIL service may take, in milliseconds.
    #[arg(long, default_value_t = Limits::default().default_call_timeout.as_millis() as u64, value_name = "MS", value_parser = range::<u64>(1, 3_600_000))]
    call_timeout_ms: u64,
    /// Time a started frame has to complete, in milliseconds.
    #[arg(long, default_value_t = Limits::default().frame_timeout.as_millis() as u64, value_name = "MS", value_parser = range::<u64>(1, 3_600_000))]
    frame_timeout_ms: u64,
    /// Time a blocked write may take before the connection is closed, in
    /// milliseconds.
    #[arg(long, default_value_t = Limits::default().write_timeout.as_millis() as u64, value_name = "MS", value_parser = range::<u64>(1, 3_600_000))]
    write_timeout_ms: u64,
    /// Requests per second per QM peer, shared by its connections (not on
    /// the provider socket); past it the gateway reads that peer's
    /// connections more slowly. 0: no limit.
    #[arg(long, default_value_t = Limits::default().rate.map_or(0, |r| r.per_second), value_name = "N", value_parser = range::<u32>(0, 1_000_000))]
    rate: u32,
    /// Requests a peer may make at once before the rate applies.
    #[arg(long, default_value_t = Limits::default().rate.map_or(0, |r| r.burst), value_name = "N", value_parser = range::<u32>(1, 1_000_000))]
    rate_burst: u32,
    /// New connections per second per QM peer, not on the provider
    /// socket; past it connections are refused. 0: no limit.
    #[arg(long, default_value_t = Limits::default().connection_rate.map_or(0, |r| r.per_second), value_name = "N", value_parser = range::<u32>(0, 1_000_000))]
    connection_rate: u32,
    /// New connections a peer may open at once before the connection rate
    /// applies.
    #[arg(long, default_value_t = Limits::default().connection_rate.map_or(0, |r| r.burst), value_name = "N", value_parser = range::<u32>(1, 1_000_000))]
    connection_burst: u32,
    /// How long a QM container that a bound held back (throttled, refused
    /// for a limit of its own, a protocol or value error, a full queue, a
    /// timed-out frame or write) is served on the held thread, apart from
    /// the others, after the last time, in milliseconds. 0: one thread
    /// serves all of QM.
    #[arg(long, default_value_t = Limits::default().held_for.map_or(0, |d| d.as_millis() as u64), value_name = "MS", value_parser = range::<u64>(0, 86_400_000))]
    qm_held_ms: u64,
    /// How long to keep flushing replies when stopping, in milliseconds.
    #[arg(long, default_value_t = Limits::default().drain_timeout.as_millis() as u64, value_name = "MS", value_parser = range::<u64>(0, 3_600_000))]
    drain_timeout_ms: u64,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame,
            max_connections: self.max_connections.max(1),
            max_connections_per_peer: self.max_connections_per_peer.max(1),
            max_topics: self.max_topics,
            max_retained_bytes: self.max_retained_bytes,
            max_topics_per_peer: self.max_topics_per_peer,
            max_retained_bytes_per_peer: self.max_retained_bytes_per_peer,
            max_calls_per_peer: self.max_calls_per_peer.max(1),
            max_subscription_patterns: self.max_subscription_patterns,
            subscription_queue: self.subscription_queue,
            max_queued_bytes: self.max_queued_bytes,
            default_call_timeout: Duration::from_millis(self.call_timeout_ms),
            frame_timeout: Duration::from_millis(self.frame_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            rate: (self.rate > 0).then_some(RateLimit {
                per_second: self.rate,
                burst: self.rate_burst.max(1),
            }),
            connection_rate: (self.connection_rate > 0).then_some(RateLimit {
                per_second: self.connection_rate,
                burst: self.connection_burst.max(1),
            }),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            max_provider_connections: self.max_provider_connections.max(1),
            idle_timeout: (self.idle_timeout_ms > 0)
                .then(|| Duration::from_millis(self.idle_timeout_ms)),
            held_for: (self.qm_held_ms > 0).then(|| Duration::from_millis(self.qm_held_ms)),
        }
    }
}

pub async fn run(socket: Option<PathBuf>, args: ServeArgs) -> Result<(), CommandError> {
    // A file named on the command line that cannot be read is that (66),
    // not a wrong file (78): said before anything binds or reads.
    for (what, path) in [
        ("--policy", &args.policy),
        ("--services", &args.services),
        ("--topics", &args.topics),
    ] {
        if let Some(path) = path {
            std::fs::File::open(path).map_err(|e| {
                CommandError::NoInput(format!("{what} {}: cannot read it: {e}", path.display()))
            })?;
        }
    }
    let activated = std::env::var_os("LISTEN_FDS").is_some();
    let provider_path = match (&args.provider_socket, args.no_provider_socket) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        // Under socket activation, the unit decides what the gateway listens on.
        (None, false) if activated => None,
        (None, false) => Some(default_provider_path()),
    };
    let config = Config {
        consumer_path: Some(socket_or_default(socket)),
        provider_path,
        limits: args.limits.limits(),
    };
    let placement = ThreadPlacement {
        nice: args.provider_nice,
        rt_priority: args.provider_rt_priority,
        cpus: args
            .provider_cpus
            .as_deref()
            .map(parse_cpu_list)
            .transpose()
            .map_err(StartError::from)?,
    };
    let mut gateway = Gateway::start(config)?;
    gateway.set_provider_placement(placement);
    gateway.set_held_nice(args.qm_held_nice);
    gateway.set_serving_slice(
        (args.serving_slice_us > 0).then(|| Duration::from_micros(args.serving_slice_us)),
    );
    gateway.set_qm_accept(match args.qm_accept.as_str() {
        "idle" => qm_ipc_server::qm_accept::AcceptScheduling::Idle,
        _ => qm_ipc_server::qm_accept::AcceptScheduling::Normal,
    });
    if let Some(path) = &args.policy {
        gateway.load_policy(path)?;
    }
    if let Some(path) = &args.services {
        gateway.load_services(path)?;
    }
    if let Some(path) = &args.topics {
        gateway.load_topic_types(path)?;
    }
    if args.demo {
        let handle = gateway.handle();
        tokio::spawn(async move {
            if let Err(e) = demo::provider::run(handle, PROVIDER).await {
                tracing::error!("demo provider stopped: {e}");
            }
        });
    }
    gateway.run(termination()).await?;
    Ok(())
}

/// `--serving-slice-us`: 0, or from the least the kernel takes (0.1 ms)
/// to below the held thread's slice (which the serving threads must
/// preempt).
fn serving_slice(text: &str) -> Result<u64, String> {
    let below = qm_ipc_server::held_thread::HELD_SLICE.as_micros() as u64;
    match text.parse::<u64>() {
        Ok(0) => Ok(0),
        Ok(us) if (100..below).contains(&us) => Ok(us),
        _ => Err(format!(
            "use 0 (the kernel's default) or 100 to {} microseconds (below the held thread's slice)",
            below - 1
        )),
    }
}
