//! The qm IPC example's topologies running for real under podman: the files
//! `qm-ipc generate` writes, turned into podman command lines by podman's own
//! quadlet generator, run with the images from `scripts/build-images.sh`
//! (the README's test command builds them), the server under
//! `systemd-socket-activate` with a `NOTIFY_SOCKET` receiver standing in for
//! systemd.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, wait_until, NotifyReceiver, Proc, Raw};
use qm_ipc_deploy::quadlet;
use qm_ipc_deploy::unit::{expand_system_specifiers, Unit, UnitFile};
use serde_json::json;

const SERVER_IMAGE: &str = "localhost/qm-ipc-server:latest";
const CLIENT_IMAGE: &str = "localhost/qm-ipc-client:latest";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn containers_conf() -> PathBuf {
    repo().join("scripts/containers.conf")
}

fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", containers_conf());
    c
}

fn podman_output(args: &[&str]) -> Output {
    podman().args(args).output().unwrap_or_else(|e| {
        panic!("podman cannot be run ({e}); the README's test command installs it (apt-get install podman runc)")
    })
}

/// The images must have been built; say how if not.
fn require_images() {
    for image in [SERVER_IMAGE, CLIENT_IMAGE] {
        let out = podman_output(&["image", "exists", image]);
        assert!(
            out.status.success(),
            "image {image} is missing: build it with scripts/build-images.sh (the README's test command does)"
        );
    }
}

/// Removes a container (and its socket directory) when dropped, also when
/// the test fails.
struct Cleanup {
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Cleanup {
    /// The server and client containers of two quadlet podman commands,
    /// their cidfiles, and the socket directory.
    fn of_pair(server_cmd: &[String], client_cmd: &[String], socket_dir: &Path) -> Self {
        Self {
            containers: vec![container_name(server_cmd), container_name(client_cmd)],
            dirs: vec![socket_dir.to_owned()],
            files: vec![
                PathBuf::from(cidfile(server_cmd)),
                PathBuf::from(cidfile(client_cmd)),
            ],
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = podman().args(["rm", "-f", "-i", "-t", "0", name]).output();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Generates `topology` with the real CLI into a temporary root, with
/// names from `tag` (tests run in parallel) and the given socket path.
fn generate(topology: &str, tag: &str, socket: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let out = Command::new(bin())
        .args(["generate", topology, "--demo", "--socket-path"])
        .arg(socket)
        .arg("--server-name")
        .arg(format!("{tag}_server"))
        .arg("--client-name")
        .arg(format!("{tag}_client"))
        .arg("--root")
        .arg(&root)
        .output()
        .expect("run qm-ipc generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tmp, root)
}

/// A command (`ExecStart`, `ExecStopPost`) of `service`, from quadlet's dry
/// run of `dir`.
fn unit_command(dir: &Path, service: &str, key: &str) -> Vec<String> {
    let services = quadlet::dryrun(dir).unwrap_or_else(|e| panic!("{e}"));
    let unit = services
        .get(service)
        .unwrap_or_else(|| panic!("quadlet generated no {service}: {:?}", services.keys()));
    quadlet::command(unit, key).unwrap_or_else(|e| panic!("{e}"))
}

fn podman_command(dir: &Path, service: &str) -> Vec<String> {
    unit_command(dir, service, "ExecStart")
}

/// The server's command with its configuration mount (`-v /etc/qm-ipc/:...`)
/// taken from the generated tree instead of this machine's `/etc`, and its
/// services' socket directory (`-v /run/asil/:...`, which systemd would
/// create) from the tree too: the tests leave the machine's alone.
fn with_staged_config(cmd: Vec<String>, root: &Path) -> Vec<String> {
    let services = root.join("run/asil");
    std::fs::create_dir_all(&services).expect("stage the services' socket directory");
    cmd.into_iter()
        .map(|word| {
            if let Some(rest) = word.strip_prefix("/etc/qm-ipc/:") {
                format!("{}/:{rest}", root.join("etc/qm-ipc").display())
            } else if let Some(rest) = word.strip_prefix("/run/asil/:") {
                format!("{}/:{rest}", services.display())
            } else {
                word
            }
        })
        .collect()
}

/// The value of `--cidfile=` in a podman command.
fn cidfile(cmd: &[String]) -> String {
    cmd.iter()
        .find_map(|a| a.strip_prefix("--cidfile="))
        .expect("--cidfile in the podman command")
        .to_owned()
}

/// The container name in a podman command (`--name X`).
fn container_name(cmd: &[String]) -> String {
    let i = cmd
        .iter()
        .position(|a| a == "--name")
        .expect("--name in the podman command");
    cmd[i + 1].clone()
}

/// Runs a podman command from quadlet (`podman run -d ...`) to completion.
fn run_detached(cmd: &[String], notify: Option<&Path>) -> Output {
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).env("CONTAINERS_CONF", containers_conf());
    if let Some(path) = notify {
        c.env("NOTIFY_SOCKET", path);
    }
    c.output().expect("run podman")
}

/// Follows a container's log (retrying until the container exists).
fn follow_logs(name: &str) -> Proc {
    wait_until(&format!("container {name} to exist"), || {
        podman_output(&["container", "exists", name])
            .status
            .success()
    });
    let mut c = podman();
    c.args(["logs", "-f", name]);
    Proc::spawn(c)
}

/// The socket path of a generated socket unit, as systemd expands it.
fn listen_path(socket_unit: &Path) -> PathBuf {
    let file = UnitFile::load(socket_unit).expect("generated socket unit parses");
    let name = socket_unit
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let unit = Unit::new(name.clone(), file, vec![]);
    let listen = unit.value("Socket", "ListenStream").expect("ListenStream=");
    PathBuf::from(expand_system_specifiers(&listen.entry.value, &name))
}

/// Times the client saw acknowledged, from its `client: sent time T` lines.
fn acknowledged(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split("client: sent time ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn asil_to_qm_runs_under_socket_activation_and_survives_a_server_restart() {
    if !common::tier_enabled(
        "podman",
        "root, podman, runc, quadlet and the images (scripts/build-images.sh)",
    ) {
        return;
    }
    require_images();
    let tag = format!("e2e{}a", std::process::id());
    let socket_dir = PathBuf::from(format!("/run/ipc/qm-ipc-{tag}"));
    let socket_path = socket_dir.join("ipc.socket");
    let (tmp, root) = generate("asil-to-qm", &tag, &socket_path);
    let host_dir = root.join("etc/containers/systemd");
    let server_cmd = with_staged_config(
        podman_command(&host_dir, &format!("{tag}_server.service")),
        &root,
    );
    let stop_post = unit_command(&host_dir, &format!("{tag}_server.service"), "ExecStopPost");
    let client_cmd = podman_command(
        &root.join("etc/qm/containers/systemd"),
        &format!("{tag}_client.service"),
    );
    assert!(
        server_cmd.contains(&"--sdnotify=container".to_owned()),
        "{server_cmd:?}"
    );
    let server_name = container_name(&server_cmd);
    let client_name = container_name(&client_cmd);
    let _cleanup = Cleanup::of_pair(&server_cmd, &client_cmd, &socket_dir);
    let listen = listen_path(&root.join(format!("etc/systemd/system/{tag}_server.socket")));
    assert_eq!(
        listen, socket_path,
        "the socket unit listens where the containers look"
    );

    // The socket unit's stand-in, with Restart=always.
    std::fs::create_dir_all(&socket_dir).unwrap();
    let mut notify = NotifyReceiver::new(tmp.path());
    let mut activator = Command::new("systemd-socket-activate");
    activator
        .arg("-l")
        .arg(&listen)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify.path.display()))
        .arg("-E")
        .arg(format!("CONTAINERS_CONF={}", containers_conf().display()))
        .arg("-E")
        .arg(format!(
            "PATH={}",
            std::env::var("PATH").unwrap_or_default()
        ))
        .arg("--")
        .arg(repo().join("crates/cli/tests/e2e/restart-always.sh"))
        .arg(cidfile(&server_cmd))
        .args(&stop_post)
        .arg("--")
        .args(&server_cmd);
    let _activator = Proc::spawn(activator);
    wait_until("the socket to listen", || listen.exists());
    assert!(
        notify.poll().is_empty(),
        "nothing is ready before the first connection"
    );

    // The first connection starts the server container.
    let mut probe = Raw::connect(&listen);
    probe.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(
        probe.recv().expect("the containerised gateway answers")["parameters"]["vendor"],
        "qm-ipc"
    );
    notify.wait_for("READY=1");
    drop(probe);
    let mut server_log = follow_logs(&server_name);
    server_log.wait_line("listening on consumer (socket-activated)");

    // The QM client, as its quadlet runs it.
    let out = run_detached(&client_cmd, None);
    assert!(
        out.status.success(),
        "client container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client_log = follow_logs(&client_name);
    client_log.wait_line("km/h");
    let before_kill = client_log.wait_line("client: sent time");
    for time in acknowledged(&client_log.output[..=before_kill]) {
        server_log.wait_line(&format!("Current time received from client is: {time}"));
    }

    // Restart: the server container dies; the socket stays; the client
    // reconnects and resubscribes by itself.
    let out = podman_output(&["kill", &server_name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lost = client_log.wait_line_after(before_kill, "lost");
    let reconnected = client_log.wait_line_after(lost, "client: connected");
    let speed = client_log.wait_line_after(reconnected, "km/h");
    let mut restarted_log = follow_logs(&server_name);
    // Every publish acknowledged to the client after the restart was
    // logged by the new server.
    let after: Vec<String> = acknowledged(&client_log.output[reconnected..=speed]);
    assert!(!after.is_empty());
    for time in after {
        restarted_log.wait_line(&format!("Current time received from client is: {time}"));
    }
}

#[test]
fn qm_to_qm_pair_shares_the_socket_directory_and_level() {
    if !common::tier_enabled(
        "podman",
        "root, podman, runc, quadlet and the images (scripts/build-images.sh)",
    ) {
        return;
    }
    require_images();
    let tag = format!("e2e{}q", std::process::id());
    let socket_dir = PathBuf::from(format!("/run/qm-ipc-{tag}"));
    let socket_path = socket_dir.join("ipc.socket");
    let (tmp, root) = generate("qm-to-qm", &tag, &socket_path);
    let qm_dir = root.join("etc/qm/containers/systemd");
    let server_cmd = podman_command(&qm_dir, &format!("{tag}_server.service"));
    let client_cmd = podman_command(&qm_dir, &format!("{tag}_client.service"));
    for cmd in [&server_cmd, &client_cmd] {
        assert!(
            cmd.join(" ")
                .contains("--security-opt label=level:s0:c1,c2"),
            "{cmd:?}"
        );
    }
    let server_name = container_name(&server_cmd);
    let client_name = container_name(&client_cmd);
    let _cleanup = Cleanup::of_pair(&server_cmd, &client_cmd, &socket_dir);
    // The stand-in for the server unit's RuntimeDirectory=.
    std::fs::create_dir_all(&socket_dir).unwrap();
    let mut notify = NotifyReceiver::new(tmp.path());
    let out = run_detached(&server_cmd, Some(&notify.path));
    assert!(
        out.status.success(),
        "server container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    notify.wait_for("READY=1");
    assert!(socket_path.exists(), "the server bound the shared socket");

    let out = run_detached(&client_cmd, None);
    assert!(
        out.status.success(),
        "client container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut client_log = follow_logs(&client_name);
    let mut server_log = follow_logs(&server_name);
    let sent = client_log.wait_line("client: sent time");
    client_log.wait_line("km/h");
    for time in acknowledged(&client_log.output[..=sent]) {
        server_log.wait_line(&format!("Current time received from client is: {time}"));
    }
}

#[test]
fn containers_see_only_what_is_mounted_into_them() {
    if !common::tier_enabled(
        "podman",
        "root, podman, runc, quadlet and the images (scripts/build-images.sh)",
    ) {
        return;
    }
    require_images();
    let tag = format!("e2e{}i", std::process::id());
    let tmp = tempfile::tempdir().unwrap();
    let socket_dir = PathBuf::from(format!("/run/ipc/qm-ipc-{tag}"));
    let socket = socket_dir.join("ipc.socket");
    let server_name = format!("{tag}_server");
    let _cleanup = Cleanup {
        containers: vec![server_name.clone()],
        dirs: vec![socket_dir.clone()],
        files: vec![],
    };
    std::fs::create_dir_all(&socket_dir).unwrap();
    let mut notify = NotifyReceiver::new(tmp.path());
    let volume = format!("{0}:{0}", socket_dir.display());
    let server = [
        "run",
        "-d",
        "--rm",
        "--name",
        &server_name,
        "--network",
        "none",
        "--sdnotify=container",
        "-v",
        &volume,
        SERVER_IMAGE,
        "serve",
        "--demo",
        "--socket",
        socket.to_str().unwrap(),
    ];
    let out = podman()
        .args(server)
        .env("NOTIFY_SOCKET", &notify.path)
        .output()
        .expect("podman");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    notify.wait_for("READY=1");

    let info = |mount: bool, path: &str| -> Output {
        let mut args = vec!["run", "--rm", "--network", "none"];
        if mount {
            args.extend(["-v", &volume]);
        }
        args.extend([
            CLIENT_IMAGE,
            "info",
            "--timeout-ms",
            "5000",
            "--socket",
            path,
        ]);
        podman_output(&args)
    };
    // With the volume: served.
    let out = info(true, socket.to_str().unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("io.qmipc.Gateway"));
    // Without it: the socket does not exist in the container.
    let out = info(false, socket.to_str().unwrap());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to") && err.contains("No such file"),
        "{err}"
    );
    // The gateway's provider socket (inside the server container) is not
    // visible to a client, with the volume or without.
    let out = info(true, "/run/qm-ipc/provider.socket");
    assert!(!out.status.success());
}

#[test]
fn ready_comes_from_the_gateway_not_from_conmon() {
    if !common::tier_enabled(
        "podman",
        "root, podman, runc, quadlet and the images (scripts/build-images.sh)",
    ) {
        return;
    }
    require_images();
    let tmp = tempfile::tempdir().unwrap();
    let mut notify = NotifyReceiver::new(tmp.path());
    let name = format!("e2e{}r", std::process::id());
    let _cleanup = Cleanup {
        containers: vec![name.clone()],
        dirs: vec![],
        files: vec![],
    };
    let notify_path = notify.path.clone();
    let broken = |sdnotify: &str| {
        // A gateway that fails before it is ready (a bad flag).
        let _ = podman()
            .args([
                "run",
                "--name",
                &name,
                "--replace",
                "--network",
                "none",
                sdnotify,
                "-d",
                SERVER_IMAGE,
            ])
            .args(["serve", "--max-frame", "not-a-number"])
            .env("NOTIFY_SOCKET", &notify_path)
            .output()
            .expect("podman");
        // Wait for it to have exited.
        let out = podman_output(&["wait", &name]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "64",
            "the gateway exits with a usage error (EX_USAGE)"
        );
    };
    // The generated setting (Notify=true, --sdnotify=container): systemd
    // hears nothing from a gateway that never became ready.
    broken("--sdnotify=container");
    assert!(
        !notify
            .poll()
            .iter()
            .any(|d| d.lines().any(|l| l == "READY=1")),
        "no readiness for a gateway that never became ready: {:?}",
        notify.seen
    );
    // The qm IPC example's setting (Type=notify without Notify=true, so conmon
    // notifies): READY=1 for the same broken gateway. Lint rule QM001.
    broken("--sdnotify=conmon");
    notify.wait_for("READY=1");
}
