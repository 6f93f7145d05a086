//! Arbitrary bytes, fed in arbitrary chunks, through the frame decoder:
//! it must never panic and never hold more than one frame plus one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_ipc_proto::framing::READ_CHUNK;
use qm_ipc_proto::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut decoder = FrameDecoder::new(256);
    for piece in rest.chunks(chunk) {
        let spare = decoder.spare();
        let n = piece.len().min(spare.len());
        spare[..n].copy_from_slice(&piece[..n]);
        decoder.commit(n);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => assert!(frame.len() < 256),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(decoder.pending() < 256 + READ_CHUNK);
    }
    let _ = decoder.finish();
});
