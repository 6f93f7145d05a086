//! The usual alternative, measured the same way: a private dbus-daemon
//! (started and stopped here), a zbus service and zbus clients.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;

use super::support::{new_histogram, pin_to, record};
use super::PAYLOADS;

const NAME: &str = "io.qmipc.Bench";
const PATH: &str = "/io/qmipc/Bench";

/// Is dbus-daemon there? (The README's test command installs it.)
pub fn available() -> Result<(), String> {
    match Command::new("dbus-daemon").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("dbus-daemon is not installed (apt-get install dbus-daemon)".into()),
    }
}

pub struct Results {
    /// (scenario, payload, histogram)
    pub latencies: Vec<(String, usize, Histogram<u64>)>,
    pub fan_out_10: f64,
}

struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    address: String,
}

impl Daemon {
    fn start(cpu: Option<usize>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                socket.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string(), "dbus-daemon"]);
                c
            }
            None => Command::new("dbus-daemon"),
        };
        let child = command
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start dbus-daemon: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err("dbus-daemon did not create its socket".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Self {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Echo;

#[zbus::interface(name = "io.qmipc.Bench")]
impl Echo {
    fn echo(&self, payload: Vec<u8>) -> Vec<u8> {
        payload
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(address: &str) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::address(address)?.build().await
}

/// The service, on its own thread and CPU, until the daemon goes away.
fn spawn_service(
    address: String,
    cpu: Option<usize>,
) -> std::sync::mpsc::Receiver<Result<(), String>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        pin_to(cpu);
        runtime().block_on(async move {
            let conn = async {
                zbus::connection::Builder::address(address.as_str())?
                    .name(NAME)?
                    .serve_at(PATH, Echo)?
                    .build()
                    .await
            }
            .await;
            match conn {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    // Serve until the bus closes the connection.
                    let mut stream = zbus::MessageStream::from(&conn);
                    while let Some(Ok(_)) = stream.next().await {}
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    ready_rx
}

pub fn measure(
    client: Option<usize>,
    server: Option<usize>,
    iterations: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Results, String> {
    let daemon = Daemon::start(server)?;
    spawn_service(daemon.address.clone(), server)
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the D-Bus service did not start".to_string())??;
    pin_to(client);
    let rt = runtime();
    let mut latencies = Vec::new();
    for payload in PAYLOADS {
        progress(&format!("D-Bus method call, {payload} B"));
        let hist = rt.block_on(async {
            let conn = connect(&daemon.address).await.map_err(|e| e.to_string())?;
            let body = vec![b'd'; payload];
            let mut hist = new_histogram();
            for i in 0..(iterations + iterations / 10) {
                let t = Instant::now();
                let reply = conn
                    .call_method(Some(NAME), PATH, Some(NAME), "Echo", &(body.clone(),))
                    .await
                    .map_err(|e| e.to_string())?;
                let echoed: Vec<u8> = reply.body().deserialize().map_err(|e| e.to_string())?;
                if echoed.len() != payload {
                    return Err("D-Bus echo returned the wrong payload".to_string());
                }
                if i >= iterations / 10 {
                    record(&mut hist, t.elapsed());
                }
            }
            Ok::<_, String>(hist)
        })?;
        latencies.push(("D-Bus method call".to_owned(), payload, hist));
    }
    progress("D-Bus signal fan-out to 10");
    let messages = (iterations * 5) as u64;
    let fan_out_10 = rt.block_on(signal_fan_out(&daemon.address, 10, messages))?;
    Ok(Results {
        latencies,
        fan_out_10,
    })
}

/// `subscribers` connections with a match rule for the signal; one emitter.
/// Delivered signals per second.
async fn signal_fan_out(address: &str, subscribers: usize, messages: u64) -> Result<f64, String> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(NAME)
        .and_then(|b| b.member("Tick"))
        .map_err(|e| e.to_string())?
        .build();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let conn = connect(address).await.map_err(|e| e.to_string())?;
        let stream = zbus::MessageStream::for_match_rule(rule.clone(), &conn, Some(4096))
            .await
            .map_err(|e| e.to_string())?;
        readers.push(tokio::spawn(async move {
            let _conn = conn;
            let mut stream = stream;
            let mut n = 0u64;
            while let Some(Ok(msg)) = stream.next().await {
                n += 1;
                let last: Result<(u64, Vec<u8>), _> = msg.body().deserialize();
                if matches!(last, Ok((i, _)) if i == messages) {
                    break;
                }
            }
            n
        }));
    }
    let emitter = connect(address).await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let payload = vec![b's'; 64];
    for i in 1..=messages {
        emitter
            .emit_signal(None::<&str>, PATH, NAME, "Tick", &(i, payload.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut delivered = 0;
    for r in readers {
        delivered += tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .map_err(|_| "D-Bus signal fan-out timed out".to_string())?
            .unwrap_or(0);
    }
    Ok(delivered as f64 / start.elapsed().as_secs_f64())
}
