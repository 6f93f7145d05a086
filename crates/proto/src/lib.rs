//! The qm-ipc wire protocol: varlink over a byte stream, with nothing but
//! pure data handling here. Sockets, tasks and timers live in the server and
//! client crates; this crate only turns bytes into messages and back, so it
//! can be fuzzed and property-tested in isolation.
//!
//! - [`framing`]: NUL-terminated frames with a hard size bound.
//! - [`message`]: varlink calls and replies (the envelope).
//! - [`params`]: typed extraction of call parameters with errors that name
//!   the offending parameter.
//! - [`interface`]: the `io.qmipc.Gateway` IDL and its requests.
//! - [`raw`]: zero-copy parsing of calls; payloads stay JSON text.
//! - [`errors`]: every error reply the gateway sends, with its varlink name.
//! - [`paths`]: the well-known socket paths, shared by gateway and clients.
//! - [`types`]: the structured values in replies (samples, service requests).
//! - [`validate`]: strict checking of peer-supplied JSON values, so nothing
//!   the gateway stores or forwards fails a conforming parser.

pub mod errors;
pub mod framing;
pub mod idl;
pub mod interface;
pub mod message;
pub mod params;
pub mod paths;
pub mod raw;
pub mod types;
pub mod validate;

pub use errors::ErrorReply;
pub use framing::{FrameDecoder, FrameError};
pub use interface::{Request, GATEWAY_IDL, GATEWAY_INTERFACE, SERVICE_INTERFACE};
pub use message::{Call, MessageError, Reply};
pub use types::{Info, Sample, Stats, TopicDescription};
pub use validate::{check_value, ValueError, ValueLimits};

/// Default upper bound of one frame (request or reply), in bytes, NUL included.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;
