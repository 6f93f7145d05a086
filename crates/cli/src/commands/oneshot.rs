//! One-shot commands for people and scripts: get, subscribe, publish, call,
//! info, stats. Each failure exits non-zero and names the varlink error.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use qm_ipc_client::{ClientError, GatewayClient, Sample};
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
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
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
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name
    topic: String,
    /// The value, as JSON: 42, "text" (with the quotes), {"kmh": 50}
    value: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// A method of an ASIL service behind the gateway, as varlinkctl takes
    /// it (INTERFACE.METHOD, e.g. com.example.Climate.SetTemperature); or a
    /// registered service's name (e.g. demo.echo), followed by its method
    service: String,
    /// Parameters, as a JSON object; or, after a registered service's name,
    /// its method (e.g. Echo) and then the parameters
    #[arg(num_args = 0..=2, value_name = "PARAMETERS")]
    rest: Vec<String>,
    /// How long the gateway waits for the provider (default: the gateway's).
    #[arg(long, value_name = "MS")]
    call_timeout_ms: Option<u64>,
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

/// Runs `f` on a fresh connection, bounded by `--timeout-ms`.
async fn with_gateway<T, F, Fut>(
    socket: Option<PathBuf>,
    common: &Common,
    f: F,
) -> Result<T, CommandError>
where
    F: FnOnce(GatewayClient) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let path = socket_or_default(socket);
    let work = async move {
        let gw = GatewayClient::connect(&path).await?;
        f(gw).await
    };
    match tokio::time::timeout(Duration::from_millis(common.timeout_ms), work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CommandError::Timeout(common.timeout_ms)),
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, CommandError> {
    serde_json::from_str(text).map_err(|e| {
        CommandError::Usage(format!(
            "{what} is not valid JSON ({e}); strings need quotes, e.g. '\"text\"'"
        ))
    })
}

fn print_sample(sample: &Sample, json: bool) {
    if json {
        println!("{}", serde_json::to_string(sample).unwrap_or_default());
    } else if sample.dropped > 0 {
        println!(
            "{} = {} (seq {}, {} dropped)",
            sample.topic, sample.value, sample.seq, sample.dropped
        );
    } else {
        println!("{} = {} (seq {})", sample.topic, sample.value, sample.seq);
    }
}

pub async fn get(socket: Option<PathBuf>, args: GetArgs) -> Result<(), CommandError> {
    let topic = args.topic.clone();
    let sample = with_gateway(socket, &args.common, |mut gw| async move {
        gw.get(&topic).await
    })
    .await?;
    print_sample(&sample, args.common.json);
    Ok(())
}

pub async fn subscribe(socket: Option<PathBuf>, args: SubscribeArgs) -> Result<(), CommandError> {
    let path = socket_or_default(socket);
    let connect = async {
        GatewayClient::connect(&path)
            .await?
            .subscribe(&args.topics)
            .await
    };
    let timeout = Duration::from_millis(args.common.timeout_ms);
    let mut subscription = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| CommandError::Timeout(args.common.timeout_ms))??;
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let sample = subscription.next().await?;
        print_sample(&sample, args.common.json);
        seen += 1;
    }
    Ok(())
}

pub async fn publish(socket: Option<PathBuf>, args: PublishArgs) -> Result<(), CommandError> {
    let value = parse_json("the value", &args.value)?;
    let topic = args.topic.clone();
    let seq = with_gateway(socket, &args.common, |mut gw| async move {
        gw.publish(&topic, value).await
    })
    .await?;
    if args.common.json {
        println!("{}", serde_json::json!({ "seq": seq }));
    } else {
        println!("published {} (seq {seq})", args.topic);
    }
    Ok(())
}

pub async fn call(socket: Option<PathBuf>, args: CallArgs) -> Result<(), CommandError> {
    // `INTERFACE.METHOD [JSON]` calls the method directly (varlinkctl's
    // shape); `SERVICE METHOD [JSON]` goes through a registered service.
    let direct = args
        .rest
        .first()
        .is_none_or(|r| r.trim_start().starts_with('{'));
    let (method, parameters) = match direct {
        true => (None, args.rest.first()),
        false => (args.rest.first().cloned(), args.rest.get(1)),
    };
    let parameters = parse_json("the parameters", parameters.map_or("{}", String::as_str))?;
    if !parameters.is_object() {
        return Err(CommandError::Usage(
            "the parameters must be a JSON object, e.g. '{\"text\": \"hi\"}'".into(),
        ));
    }
    let (service, call_timeout) = (args.service.clone(), args.call_timeout_ms);
    let result = with_gateway(socket, &args.common, |mut gw| async move {
        match method {
            Some(method) => gw.call(&service, &method, parameters, call_timeout).await,
            None => gw
                .connection()
                .call(&service, parameters)
                .await
                .map(Value::Object),
        }
    })
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
    let describe = args.describe;
    let (info, idl) = with_gateway(socket, &args.common, |mut gw| async move {
        let info = gw.info().await?;
        let idl = match describe {
            true => Some(gw.describe(GATEWAY_INTERFACE).await?),
            false => None,
        };
        Ok((info, idl))
    })
    .await?;
    if args.common.json {
        let mut out = Value::Object(info);
        if let Some(idl) = idl {
            out["description"] = Value::String(idl);
        }
        println!("{out}");
        return Ok(());
    }
    for key in ["vendor", "product", "version", "url"] {
        if let Some(v) = info.get(key).and_then(Value::as_str) {
            println!("{key}: {v}");
        }
    }
    if let Some(Value::Array(interfaces)) = info.get("interfaces") {
        println!("interfaces:");
        for i in interfaces.iter().filter_map(Value::as_str) {
            println!("  {i}");
        }
    }
    if let Some(idl) = idl {
        println!();
        print!("{idl}");
    }
    Ok(())
}

pub async fn stats(socket: Option<PathBuf>, args: StatsArgs) -> Result<(), CommandError> {
    let stats = with_gateway(
        socket,
        &args.common,
        |mut gw| async move { gw.stats().await },
    )
    .await?;
    if args.common.json {
        println!("{}", Value::Object(stats));
    } else {
        for (key, value) in &stats {
            println!("{key}: {value}");
        }
    }
    Ok(())
}
