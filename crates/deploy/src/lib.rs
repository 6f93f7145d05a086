//! The files around the gateway: systemd socket units, podman quadlets and
//! their drop-ins.
//!
//! - [`unit`]: a lossless model of systemd unit files (parse, query, edit,
//!   print back byte for byte), drop-in resolution and specifiers.
//! - [`generate`]: the qm IPC example's file sets for ASIL-to-QM and QM-to-QM.
//! - [`quadlet`]: podman's quadlet generator, run on generated files.
//! - [`lint`]: checks a set of files (or a whole root) against the rules the
//!   qm IPC example, the qm SELinux policy and podman's semantics imply.

pub mod generate;
pub mod lint;
pub mod quadlet;
pub mod unit;
