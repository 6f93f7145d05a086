//! Bounded NUL-terminated framing.
//!
//! Varlink messages are JSON objects each followed by a single NUL byte. The
//! decoder never holds more than one maximum-size frame plus one read chunk:
//! a peer that sends a longer frame gets [`FrameError::TooLarge`] as soon as
//! the bound is crossed, before the rest of it is even read.

use std::ops::Range;

/// Bytes the decoder asks for per read; also the slack it keeps above the
/// frame bound.
pub const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame grew past the bound without a terminating NUL.
    #[error("frame exceeds the maximum of {max} bytes")]
    TooLarge { max: usize },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({pending} bytes without a terminating NUL)")]
    Truncated { pending: usize },
}

/// Splits a byte stream into frames. Feed it with [`spare`](Self::spare) and
/// [`commit`](Self::commit); take frames with [`next_frame`](Self::next_frame).
#[derive(Debug)]
pub struct FrameDecoder {
    /// Holds received bytes in `..filled`; bytes past it are read space.
    buf: Vec<u8>,
    filled: usize,
    /// Start of the first byte not yet returned as part of a frame.
    start: usize,
    /// Bytes from `start` already known to contain no NUL.
    scanned: usize,
    max_frame: usize,
}

impl FrameDecoder {
    /// `max_frame` counts the terminating NUL.
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            filled: 0,
            start: 0,
            scanned: 0,
            max_frame: max_frame.max(2),
        }
    }

    /// Writable space for the next read, [`READ_CHUNK`] bytes. Call
    /// [`commit`](Self::commit) with the number of bytes actually read. A
    /// read that is abandoned (a cancelled future) leaves no trace, so
    /// reading is cancel-safe.
    pub fn spare(&mut self) -> &mut [u8] {
        self.compact();
        let want = self.filled + READ_CHUNK;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.filled..want]
    }

    /// Marks `n` bytes of the last [`spare`](Self::spare) slice as filled.
    pub fn commit(&mut self, n: usize) {
        self.filled = (self.filled + n.min(READ_CHUNK)).min(self.buf.len());
    }

    /// Appends bytes directly (for callers that already own a buffer).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.truncate(self.filled);
        self.buf.extend_from_slice(bytes);
        self.filled = self.buf.len();
    }

    /// The next complete frame without its NUL, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match self.next_range()? {
            Some(range) => Ok(Some(&self.buf[range])),
            None => Ok(None),
        }
    }

    fn next_range(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        let from = self.start + self.scanned;
        // memchr looks at a word or a vector at a time: a byte at a time
        // was a twelfth of a client's instructions per `Get`.
        match memchr::memchr(0, &self.buf[from..self.filled]) {
            Some(offset) => {
                let end = from + offset;
                if end + 1 - self.start > self.max_frame {
                    return Err(FrameError::TooLarge {
                        max: self.max_frame,
                    });
                }
                let range = self.start..end;
                self.start = end + 1;
                self.scanned = 0;
                Ok(Some(range))
            }
            None => {
                self.scanned = self.filled - self.start;
                if self.scanned >= self.max_frame {
                    return Err(FrameError::TooLarge {
                        max: self.max_frame,
                    });
                }
                Ok(None)
            }
        }
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.filled - self.start
    }

    /// The bytes received and not yet returned as frames: whole frames not
    /// yet taken and the start of an unfinished one. A gateway handing its
    /// connection to its next instance carries them, so nothing the peer
    /// sent is lost.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.filled]
    }

    /// Call at end of stream: an unfinished frame is an error.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending() {
            0 => Ok(()),
            pending => Err(FrameError::Truncated { pending }),
        }
    }

    /// Drops consumed bytes so the buffer never grows past one frame plus
    /// one read chunk.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        // Give memory back after an unusually large frame.
        if self.buf.capacity() > 4 * READ_CHUNK && self.filled < READ_CHUNK {
            self.buf.truncate(self.filled);
            self.buf.shrink_to(2 * READ_CHUNK);
        }
    }
}

/// Appends `json` and the terminating NUL to `out`.
pub fn encode_frame(out: &mut Vec<u8>, json: &[u8]) {
    out.extend_from_slice(json);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        decoder.extend(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame.to_vec());
        }
        Ok(frames)
    }

    #[test]
    fn splits_frames_and_keeps_partial_tail() {
        let mut d = FrameDecoder::new(64);
        let frames = feed(&mut d, b"{\"a\":1}\0{\"b\"").unwrap();
        assert_eq!(frames, vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(d.pending(), 4);
        let frames = feed(&mut d, b":2}\0").unwrap();
        assert_eq!(frames, vec![b"{\"b\":2}".to_vec()]);
        assert!(d.finish().is_ok());
    }

    #[test]
    fn frame_of_exactly_max_is_accepted_one_more_is_not() {
        let mut d = FrameDecoder::new(8);
        assert_eq!(feed(&mut d, b"1234567\0").unwrap().len(), 1);
        let mut d = FrameDecoder::new(8);
        assert_eq!(
            feed(&mut d, b"12345678\0"),
            Err(FrameError::TooLarge { max: 8 })
        );
    }

    #[test]
    fn oversized_frame_is_refused_before_its_end_arrives() {
        let mut d = FrameDecoder::new(16);
        assert_eq!(
            feed(&mut d, &[b'x'; 16]),
            Err(FrameError::TooLarge { max: 16 })
        );
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = FrameDecoder::new(16);
        feed(&mut d, b"abc").unwrap();
        assert_eq!(d.finish(), Err(FrameError::Truncated { pending: 3 }));
    }

    #[test]
    fn abandoned_reads_leave_no_trace() {
        let mut d = FrameDecoder::new(64);
        d.spare();
        d.spare();
        let spare = d.spare();
        spare[..3].copy_from_slice(b"a\0b");
        d.commit(3);
        d.spare();
        assert_eq!(d.next_frame().unwrap(), Some(&b"a"[..]));
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.pending(), 1);
    }

    #[test]
    fn spare_and_commit_fill_the_buffer() {
        let mut d = FrameDecoder::new(64);
        let spare = d.spare();
        spare[..4].copy_from_slice(b"ab\0c");
        d.commit(4);
        assert_eq!(d.next_frame().unwrap(), Some(&b"ab"[..]));
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.pending(), 1);
    }

    proptest! {
        /// Any split of a valid stream into reads yields the same frames.
        #[test]
        fn chunking_does_not_change_frames(
            frames in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..40), 0..20),
            cuts in proptest::collection::vec(0usize..1000, 0..30),
        ) {
            let mut stream = Vec::new();
            for f in &frames { encode_frame(&mut stream, f); }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = FrameDecoder::new(64);
            let mut got = Vec::new();
            let mut last = 0;
            for cut in cuts.into_iter().chain(std::iter::once(stream.len())) {
                got.extend(feed(&mut d, &stream[last..cut]).unwrap());
                last = cut;
            }
            prop_assert_eq!(got, frames);
            prop_assert!(d.finish().is_ok());
        }

        /// Arbitrary bytes never panic the decoder and never make it hold
        /// more than one frame plus one chunk.
        #[test]
        fn arbitrary_bytes_stay_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40)) {
            let mut d = FrameDecoder::new(128);
            for chunk in chunks {
                if feed(&mut d, &chunk).is_err() { break; }
                prop_assert!(d.pending() < 128);
            }
        }
    }
}
