//! The configuration `qm-ipc generate --bridge` writes is what the bridge
//! takes: its routes file loads (no routes), and Zenoh reads the Zenoh
//! file it names.

use qm_ipc_bridge::config::{Config, Side};
use qm_ipc_deploy::generate::{
    generate, write_root, BridgeSide, Options, Topology, BRIDGE_CONFIG_PATH,
};

#[test]
fn the_generated_configuration_is_accepted() {
    for (bridge_side, side, socket) in [
        (BridgeSide::Consumer, Side::Consumer, "/run/ipc/ipc.socket"),
        (
            BridgeSide::Provider,
            Side::Provider,
            "/run/qm-ipc/provider.socket",
        ),
    ] {
        let options = Options {
            bridge: true,
            bridge_side,
            ..Options::default()
        };
        let files = generate(Topology::AsilToQm, &options).expect("generated");
        let root = tempfile::tempdir().expect("tempdir");
        write_root(root.path(), &files, false).expect("written");
        let path = root.path().join(BRIDGE_CONFIG_PATH.trim_start_matches('/'));
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.side, side);
        assert_eq!(config.gateway_socket, std::path::Path::new(socket));
        assert!(config.topics_out.is_empty() && config.topics_in.is_empty());
        assert!(config.services_export.is_empty() && config.services_import.is_empty());
        if let Err(e) = zenoh::Config::from_file(&config.zenoh_config) {
            panic!("{}: {e}", config.zenoh_config.display());
        }
    }
}
