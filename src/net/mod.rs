//! Bytes and frames: the wire protocol's typed frames, the [`Message`] with
//! its `MSG` frame encoded once, the line codec, the TCP listener, and the
//! HTTP listener whose WebSocket connections carry the same frames.

pub mod backlog;
pub mod certs;
pub mod codec;
pub mod frame;
pub mod http;
pub mod listener;
pub mod message;
pub mod pinned;
pub mod tls;
pub mod transport;
pub mod ws;

pub use backlog::{Backlog, BacklogWriter};
pub use codec::{ClientCodec, ServerCodec, DEFAULT_MAX_FRAME_BYTES};
pub use frame::{ByeReason, ClientFrame, ErrorCode, FrameError, ServerFrame, Tags};
pub use message::Message;
