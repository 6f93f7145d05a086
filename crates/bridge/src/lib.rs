//! qm-ipc-bridge: carries chosen topics and services between qm-ipc
//! gateways on different machines over Zenoh. It is an ordinary client of
//! its local gateway (through `qm-ipc-client`), so the gateway itself never
//! links Zenoh and its policy still decides what the bridge may read,
//! publish and call. See docs/bridge.md.

pub mod bounds;
pub mod config;
pub mod run;
pub mod wire;
