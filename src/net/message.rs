//! A stored message and its `MSG` frame, encoded once when the message is
//! accepted or read back from the store and shared by every receiver.

use bytes::{Bytes, BytesMut};

use super::frame::{encode_msg_into, msg_len_bound};
use crate::types::{ClientId, Seq};

/// One accepted message, with its `MSG` wire frame encoded once.
///
/// The frame is built when the message is accepted (or read back from the
/// store) and shared by every receiver, so fan-out copies a pointer, not the
/// text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    seq: Seq,
    unix_ms: u64,
    from: ClientId,
    frame: Bytes,
    text_start: usize,
}

impl Message {
    /// Builds a message and its `MSG <seq> <unix_ms> <from> <text>\n` frame.
    pub fn new(seq: Seq, unix_ms: u64, from: ClientId, text: &[u8]) -> Message {
        let mut buf = BytesMut::with_capacity(msg_len_bound(&from, text));
        Message::new_in(&mut buf, seq, unix_ms, from, text)
    }

    /// Like [`Message::new`], but encodes the frame in `buf`'s spare room:
    /// messages built one after the other in a buffer with room for all of
    /// them share one allocation (used when reading many from the store).
    pub fn new_in(
        buf: &mut BytesMut,
        seq: Seq,
        unix_ms: u64,
        from: ClientId,
        text: &[u8],
    ) -> Message {
        let need = msg_len_bound(&from, text);
        if buf.capacity() - buf.len() < need {
            buf.reserve(need.max(64 * 1024));
        }
        let (frame, text_start) = encode_msg_into(buf, seq, unix_ms, &from, text);
        Message {
            seq,
            unix_ms,
            from,
            frame,
            text_start,
        }
    }

    /// The message's place in the global order.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// When the broker accepted it.
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// Who sent it.
    pub fn from(&self) -> &ClientId {
        &self.from
    }

    /// The text, without the frame around it.
    pub fn text(&self) -> &[u8] {
        &self.frame[self.text_start..self.frame.len() - 1]
    }

    /// The complete encoded `MSG` frame, newline included.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frame_and_text_agree() {
        let m = Message::new(
            Seq(42),
            1_764_080_000_000,
            ClientId::new("7").unwrap(),
            b"hi there",
        );
        assert_eq!(&m.frame()[..], b"MSG 42 1764080000000 7 hi there\n");
        assert_eq!(m.text(), b"hi there");
    }
}
