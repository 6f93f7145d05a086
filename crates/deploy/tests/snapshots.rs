//! The generated files are exactly the examples shipped in `deploy/`.
//! After an intended change, regenerate them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p qm-ipc-deploy --test snapshots`.

use std::path::Path;

use qm_ipc_deploy::generate::{generate, Options, Topology};

fn check(topology: Topology) {
    check_in(topology, &topology.to_string(), &Options::default());
}

fn check_in(topology: Topology, dir: &str, options: &Options) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(dir);
    for file in generate(topology, options).unwrap() {
        let path = root.join(file.path.strip_prefix("/").unwrap());
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &file.content).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", path.display()));
        assert_eq!(
            file.content,
            expected,
            "{} differs from the generator",
            path.display()
        );
    }
}

#[test]
fn asil_to_qm_matches_deploy_examples() {
    check(Topology::AsilToQm);
}

#[test]
fn qm_to_qm_matches_deploy_examples() {
    check(Topology::QmToQm);
}

/// `qm-ipc generate asil-to-qm --demo`: the same set plus the demo's ASIL
/// service (its socket unit and container), its services entry, and the
/// policy that lets QM call it.
#[test]
fn asil_to_qm_demo_matches_deploy_examples() {
    let options = Options {
        demo: true,
        ..Options::default()
    };
    check_in(Topology::AsilToQm, "asil-to-qm-demo", &options);
}
