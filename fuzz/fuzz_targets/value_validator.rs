//! Arbitrary text through the strict value validator the gateway runs on
//! every value a peer publishes: never a panic, and whatever it accepts a
//! conforming parser (serde_json's `Value`) accepts too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_ipc_proto::validate::{check_value, ValueLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if check_value(text, &ValueLimits::default()).is_ok() {
        if let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
            panic!("accepted {text:?}, which serde_json refuses: {e}");
        }
    }
});
