//! Arbitrary frames through the call parser and the request decoder, as the
//! gateway runs them on every frame a peer sends (and as clients parse
//! calls): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_ipc_proto::raw::RawCall;
use qm_ipc_proto::{Call, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = RawCall::parse(data) {
        let _ = Request::from_raw(&call);
    }
    if let Ok(call) = Call::parse(data) {
        let _ = Request::from_call(call);
    }
});
