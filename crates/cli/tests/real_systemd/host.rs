//! A machine with systemd as PID 1: a privileged podman container booted
//! from the Debian trixie rootfs that `scripts/build-test-rootfs.sh` caches
//! (systemd 257 with `varlinkctl` and `systemd-analyze`, podman 5.4 and its
//! own quadlet as the generator). Each test boots its own from an overlay
//! of the cached rootfs (`--rootfs DIR:O`), so nothing leaks between tests
//! and the cache stays clean. Removed in `Drop`, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Where `scripts/build-test-rootfs.sh` leaves the rootfs by default.
pub const DEFAULT_ROOTFS: &str = "/var/cache/qm-ipc/trixie-rootfs";
pub const SERVER_IMAGE: &str = "localhost/qm-ipc-server:latest";
pub const CLIENT_IMAGE: &str = "localhost/qm-ipc-client:latest";

/// Deadline for the slow things: a boot, a container start, a restart.
pub const SLOW: Duration = Duration::from_secs(90);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn rootfs() -> PathBuf {
    std::env::var_os("QM_IPC_TEST_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS))
}

/// The outer podman (on the test machine), with the settings these kernels
/// need.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", repo().join("scripts/containers.conf"));
    c
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `condition` until it holds; panics with `what` and the last
/// thing `condition` saw after `limit`.
pub fn wait_for(what: &str, limit: Duration, condition: impl FnMut() -> Result<(), String>) {
    super::common::wait_for_within(what, limit, condition);
}

pub struct SystemdHost {
    pub name: String,
    /// Staging files (images, generated units) for this host.
    pub work: tempfile::TempDir,
}

impl SystemdHost {
    /// Boots a fresh host named after `tag` and waits until systemd says
    /// the system is up. `extra` are more `podman run` arguments (volumes).
    pub fn boot(tag: &str, extra: &[&str]) -> Self {
        let rootfs = rootfs();
        assert!(
            rootfs.join(".qm-ipc-rootfs-complete").exists(),
            "no trixie rootfs at {}: build it with scripts/build-test-rootfs.sh (the README's test command does)",
            rootfs.display()
        );
        let name = format!("qm-ipc-test-{tag}-{}", std::process::id());
        let _ = podman().args(["rm", "-f", "-t", "0", &name]).output();
        let out = podman()
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--privileged",
                "--cgroupns=host",
            ])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--systemd=always"])
            .args(extra)
            .arg("--rootfs")
            .arg(format!("{}:O", rootfs.display()))
            .arg("/lib/systemd/systemd")
            .output()
            .expect("run podman (the README's test command installs it)");
        assert!(out.status.success(), "boot {name}: {}", text(&out.stderr));
        let host = Self {
            name,
            work: tempfile::tempdir().expect("work dir"),
        };
        wait_for("systemd to finish booting", SLOW, || {
            let state = host.run(&["systemctl", "is-system-running"]);
            let state = text(&state.stdout);
            match state.trim() {
                "running" => Ok(()),
                "degraded" => Err(host.sh("systemctl --failed --no-legend")),
                other => Err(other.to_owned()),
            }
        });
        host
    }

    /// Runs a command on the host.
    pub fn run(&self, args: &[&str]) -> Output {
        podman()
            .args(["exec", &self.name])
            .args(args)
            .output()
            .expect("podman exec")
    }

    /// Runs a shell script on the host; stdout, and stderr after it
    /// (without nested podman's harmless net_cls warning).
    pub fn sh(&self, script: &str) -> String {
        let out = self.run(&["sh", "-c", script]);
        let mut s = text(&out.stdout);
        for line in text(&out.stderr).lines() {
            if !line.contains("net_cls") && !line.contains("cgroups-v1") {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed on {} ({}):\n{}{}",
            self.name,
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Copies the tree `dir` onto the host's `/`.
    pub fn install_tree(&self, dir: &Path) {
        let out = podman()
            .arg("cp")
            .arg(format!("{}/.", dir.display()))
            .arg(format!("{}:/", self.name))
            .output()
            .expect("podman cp");
        assert!(out.status.success(), "install: {}", text(&out.stderr));
    }

    /// Loads the qm-ipc images into the host's own podman, and installs
    /// the static `qm-ipc` binary from the server image as `/usr/bin/qm-ipc`
    /// (the same binary the containers run).
    pub fn load_images(&self) {
        let tar = self.work.path().join("images.tar");
        if !tar.exists() {
            for image in [SERVER_IMAGE, CLIENT_IMAGE] {
                let out = podman().args(["image", "exists", image]).output().unwrap();
                assert!(
                    out.status.success(),
                    "image {image} is missing: build it with scripts/build-images.sh (the README's test command does)"
                );
            }
            let out = podman()
                .args(["save", "-q", "-o"])
                .arg(&tar)
                .args([SERVER_IMAGE, CLIENT_IMAGE])
                .output()
                .unwrap();
            assert!(out.status.success(), "podman save: {}", text(&out.stderr));
        }
        let out = podman()
            .arg("cp")
            .arg(&tar)
            .arg(format!("{}:/root/images.tar", self.name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        self.ok(&["podman", "load", "-q", "-i", "/root/images.tar"]);
        self.install_binary();
    }

    fn install_binary(&self) {
        let bin = self.work.path().join("qm-ipc");
        let holder = format!("{}-bin", self.name);
        let _ = podman().args(["rm", "-f", &holder]).output();
        let out = podman()
            .args(["create", "--name", &holder, SERVER_IMAGE])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = podman()
            .arg("cp")
            .arg(format!("{holder}:/usr/bin/qm-ipc"))
            .arg(&bin)
            .output()
            .unwrap();
        let _ = podman().args(["rm", "-f", &holder]).output();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = podman()
            .arg("cp")
            .arg(&bin)
            .arg(format!("{}:/usr/bin/qm-ipc", self.name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// Writes the files of `qm-ipc generate ARGS --root` onto the host and
    /// reloads systemd, so that quadlet generates the services.
    pub fn generate(&self, args: &[&str]) -> PathBuf {
        let root = self.work.path().join(format!("root-{}", args.join("-")));
        let out = Command::new(super::common::bin())
            .arg("generate")
            .args(args)
            .arg("--root")
            .arg(&root)
            .output()
            .expect("run qm-ipc generate");
        assert!(out.status.success(), "generate: {}", text(&out.stderr));
        self.install_tree(&root);
        self.ok(&["systemctl", "daemon-reload"]);
        root
    }

    /// `systemctl show -p KEY --value UNIT`.
    pub fn property(&self, unit: &str, key: &str) -> String {
        text(
            &self
                .run(&["systemctl", "show", "-p", key, "--value", unit])
                .stdout,
        )
        .trim()
        .to_owned()
    }

    /// The unit's journal, messages only.
    pub fn journal(&self, unit: &str) -> String {
        self.sh(&format!("journalctl -q --no-pager -o cat -u {unit}"))
    }

    /// Waits until the unit's journal has a line containing `needle` more
    /// than `after` times; returns the new count.
    pub fn wait_journal(&self, unit: &str, needle: &str, after: usize) -> usize {
        let mut count = 0;
        wait_for(
            &format!("{needle:?} in the journal of {unit}"),
            SLOW,
            || {
                let journal = self.journal(unit);
                count = journal.lines().filter(|l| l.contains(needle)).count();
                if count > after {
                    Ok(())
                } else {
                    Err(journal)
                }
            },
        );
        count
    }

    /// The host pid of the main process of container `name`.
    pub fn container_pid(&self, name: &str) -> String {
        self.ok(&["podman", "inspect", "-f", "{{.State.Pid}}", name])
            .trim()
            .to_owned()
    }
}

impl Drop for SystemdHost {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}
