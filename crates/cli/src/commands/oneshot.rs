//! One-shot commands for people and scripts: get, subscribe, publish, call,
//! info, stats. Each failure exits non-zero and names the varlink error.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qm_ipc_client::{ClientError, Sample, Session};
use qm_ipc_proto::GATEWAY_INTERFACE;
use serde_json::Value;

use super::{socket_or_default, CommandError};

/// Options every one-shot command has.
#[derive(Debug, Args)]
pub struct Common {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Give up when the gateway has not answered within this many
    /// milliseconds.
    #[arg(long, default_value_t = 10_000, value_name = "MS", value_parser = crate::commands::range::<u64>(1, 86_400_000))]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Topic name, e.g. vehicle.speed
    topic: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Topic names or patterns (`vehicle.*`, `*`)
    #[arg(required = true)]
    topics: Vec<String>,
    /// Stop after this many samples (default: run until interrupted).
    #[arg(long, value_name = "N", value_parser = crate::commands::range::<u64>(1, u64::MAX))]
    count: Option<u64>,
    /// Stop when the connection is lost, instead of following the gateway
    /// across restarts (reconnecting with backoff, which is the default).
    #[arg(long)]
    once: bool,
    /// Start each line with the sample's publish time (UTC, RFC 3339).
    #[arg(long)]
    timestamps: bool,
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many milliseconds in all (default: no limit). Without
    /// --count, a subscription that got a sample ends there with success;
    /// one that got none, or fewer than --count, fails (exit 75).
    #[arg(long, value_name = "MS", value_parser = crate::commands::range::<u64>(1, 86_400_000))]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name
    topic: String,
    /// The value, a JSON object: {"kmh": 50}
    value: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// A method of an ASIL service behind the gateway, as varlinkctl takes
    /// it: INTERFACE.METHOD, e.g. com.example.Climate.SetTemperature
    method: String,
    /// Parameters, as a JSON object
    #[arg(value_name = "PARAMETERS")]
    parameters: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Also print the interface definition of io.qmipc.Gateway.
    #[arg(long)]
    describe: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    common: Common,
}

/// A session bounded by `--timeout-ms` for each call.
fn session(socket: Option<PathBuf>, common: &Common) -> Session {
    Session::builder(socket_or_default(socket))
        .timeout(Duration::from_millis(common.timeout_ms))
        .build()
}

fn parse_json(what: &str, text: &str) -> Result<Value, CommandError> {
    serde_json::from_str(text).map_err(|e| {
        CommandError::Usage(format!(
            "{what} is not valid JSON ({e}); strings need quotes, e.g. '\"text\"'"
        ))
    })
}

fn print_sample(sample: &Sample, json: bool, timestamps: bool) {
    if json {
        println!("{}", serde_json::to_string(sample).unwrap_or_default());
        return;
    }
    let at = match timestamps {
        true => format!("{} ", utc_time(sample.timestamp_us)),
        false => String::new(),
    };
    if sample.dropped > 0 {
        println!(
            "{at}{} = {} (seq {}, {} dropped)",
            sample.topic, sample.value, sample.seq, sample.dropped
        );
    } else {
        println!(
            "{at}{} = {} (seq {})",
            sample.topic, sample.value, sample.seq
        );
    }
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds,
/// `2026-11-29T03:01:50.123456Z`.
fn utc_time(timestamp_us: u64) -> String {
    let secs = (timestamp_us / 1_000_000) as i64;
    let micros = timestamp_us % 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub async fn get(socket: Option<PathBuf>, args: GetArgs) -> Result<(), CommandError> {
    let sample = session(socket, &args.common)
        .get::<Value>(&args.topic)
        .await?;
    print_sample(&sample, args.common.json, false);
    Ok(())
}

pub async fn subscribe(socket: Option<PathBuf>, args: SubscribeArgs) -> Result<(), CommandError> {
    let session = Session::new(socket_or_default(socket));
    let mut samples = session.subscribe::<Value>(args.topics.iter().cloned())?;
    let json = args.json;
    let seen = std::cell::Cell::new(0u64);
    let follow = async {
        while args.count.is_none_or(|count| seen.get() < count) {
            match samples.next().await {
                Some(Ok(sample)) => {
                    print_sample(&sample, json, args.timestamps);
                    seen.set(seen.get() + 1);
                }
                // Events go to stderr, so stdout stays one sample a line.
                Some(Err(e)) if e.is_disconnect() => {
                    if args.once {
                        return Err(e.into());
                    }
                    eprintln!("qm-ipc: {e}; reconnecting");
                }
                Some(Err(e @ ClientError::Remote(_))) => return Err(e.into()),
                Some(Err(e)) => eprintln!("qm-ipc: {e}"),
                None => return Ok(()),
            }
        }
        Ok(())
    };
    let Some(ms) = args.timeout_ms else {
        return follow.await;
    };
    match tokio::time::timeout(Duration::from_millis(ms), follow).await {
        Ok(done) => done,
        // The time limit is how a subscription without a count ends, once
        // something came.
        Err(_) => match (args.count, seen.get()) {
            (_, 0) => Err(CommandError::NoSample(ms)),
            (None, _) => Ok(()),
            (Some(count), seen) => Err(CommandError::TimeLimit { ms, seen, count }),
        },
    }
}

pub async fn publish(socket: Option<PathBuf>, args: PublishArgs) -> Result<(), CommandError> {
    let value = parse_json("VALUE", &args.value)?;
    let seq = session(socket, &args.common)
        .publish(&args.topic, &value)
        .await?;
    if args.common.json {
        println!("{}", serde_json::json!({ "seq": seq }));
    } else {
        println!("published {} (seq {seq})", args.topic);
    }
    Ok(())
}

pub async fn call(socket: Option<PathBuf>, args: CallArgs) -> Result<(), CommandError> {
    if !args.method.contains('.') {
        return Err(CommandError::CommandLine(format!(
            "METHOD is INTERFACE.METHOD, as varlinkctl takes it (e.g. io.qmipc.Demo.Echo), not {:?}; \
             `qm-ipc info` lists the interfaces you may call",
            args.method
        )));
    }
    let parameters = parse_json("PARAMETERS", args.parameters.as_deref().unwrap_or("{}"))?;
    if !parameters.is_object() {
        return Err(CommandError::Usage(
            "the parameters must be a JSON object, e.g. '{\"text\": \"hi\"}'".into(),
        ));
    }
    let result: Value = session(socket, &args.common)
        .call(&args.method, &parameters)
        .await?;
    if args.common.json {
        println!("{result}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn info(socket: Option<PathBuf>, args: InfoArgs) -> Result<(), CommandError> {
    let session = session(socket, &args.common);
    let info = session.info().await?;
    let idl = match args.describe {
        true => Some(session.interface_description(GATEWAY_INTERFACE).await?),
        false => None,
    };
    if args.common.json {
        let mut out = serde_json::to_value(&info).unwrap_or_default();
        if let Some(idl) = idl {
            out["description"] = Value::String(idl);
        }
        println!("{out}");
        return Ok(());
    }
    println!("vendor: {}", info.vendor);
    println!("product: {}", info.product);
    println!("version: {}", info.version);
    println!("url: {}", info.url);
    println!("interfaces:");
    for i in &info.interfaces {
        println!("  {i}");
    }
    if let Some(idl) = idl {
        println!();
        print!("{idl}");
    }
    Ok(())
}

pub async fn stats(socket: Option<PathBuf>, args: StatsArgs) -> Result<(), CommandError> {
    let stats = session(socket, &args.common).stats().await?;
    let stats = serde_json::to_value(&stats).unwrap_or_default();
    if args.common.json {
        println!("{stats}");
    } else if let Value::Object(stats) = stats {
        for (key, value) in &stats {
            println!("{key}: {value}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::utc_time;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(utc_time(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            utc_time(1_795_921_192_882_939),
            "2026-11-29T02:59:52.882939Z"
        );
    }
}
