//! A reader's backlog as the store reads it back: the `MSG` frames of
//! consecutive stored messages in one buffer, handed to the session and
//! written out as one piece.
//!
//! Catch-up is the one path where a reader gets thousands of messages that
//! nobody else is being sent at the same time, so sharing a frame per
//! message (what [`Message`] is for) buys nothing there and costs an object,
//! a reference count and a copy per message.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{put_msg_head_raw, ServerFrame};
use super::{FrameError, Message};
use crate::types::{ClientId, Seq};

/// The encoded `MSG` frames of a run of stored messages for one reader, in
/// seq order, and how far in the log the read that made it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backlog {
    frames: Bytes,
    count: usize,
    read: usize,
    newest: Seq,
    last: Seq,
}

impl Backlog {
    /// No frames; the read covered the log up to `last`.
    pub fn empty(last: Seq) -> Backlog {
        Backlog {
            frames: Bytes::new(),
            count: 0,
            read: 0,
            newest: Seq::ZERO,
            last,
        }
    }

    /// The frames of `messages` that `reader` did not send, the read having
    /// covered the log up to `upto` when it found nothing more, up to the
    /// last of `messages` otherwise (a read that stopped at a bound).
    pub fn of_messages(messages: &[Message], reader: &ClientId, upto: Seq) -> Backlog {
        let last = messages.last().map_or(upto, Message::seq);
        let mut w = BacklogWriter::with_capacity(messages.iter().map(|m| m.frame().len()).sum());
        for m in messages {
            if m.from() == reader {
                w.skip();
                continue;
            }
            w.buf.put_slice(m.frame());
            w.count += 1;
            w.newest = m.seq();
        }
        w.finish(last)
    }

    /// The frames, newlines included, one after the other.
    pub fn frames(&self) -> &Bytes {
        &self.frames
    }

    /// How many messages the frames hold.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no frames.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many stored messages the read went through: those it holds and
    /// the reader's own it left out. A read's count bound is on these, so
    /// a reader's own messages cost the store's time like any others.
    pub fn read(&self) -> usize {
        self.read
    }

    /// The seq of the last message whose frame it holds (`Seq::ZERO` when
    /// empty): the highest the reader may acknowledge.
    pub fn newest(&self) -> Seq {
        self.newest
    }

    /// How far the read got: the reader's cursor moves here, past messages
    /// of its own that were left out.
    pub fn last(&self) -> Seq {
        self.last
    }

    /// The messages again, parsed from the frames (for tests and tools; the
    /// server only writes the frames out).
    pub fn messages(&self) -> Result<Vec<Message>, FrameError> {
        let mut out = Vec::with_capacity(self.count);
        let mut rest = self.frames.clone();
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', &rest)
                .ok_or_else(|| FrameError::bad("backlog frame without a newline"))?;
            let line = rest.split_to(end + 1);
            match ServerFrame::parse(line.slice(..end))? {
                ServerFrame::Msg {
                    seq,
                    unix_ms,
                    from,
                    text,
                } => out.push(Message::new(seq, unix_ms, from, &text)),
                other => return Err(FrameError::bad(format!("not a MSG frame: {other:?}"))),
            }
        }
        Ok(out)
    }
}

/// Builds a [`Backlog`] one message at a time into one buffer.
#[derive(Debug)]
pub struct BacklogWriter {
    buf: BytesMut,
    count: usize,
    skipped: usize,
    newest: Seq,
    before: Seq,
}

impl BacklogWriter {
    /// A writer whose first `bytes` of frames need no reallocation.
    pub fn with_capacity(bytes: usize) -> BacklogWriter {
        BacklogWriter::reusing(BytesMut::new(), bytes)
    }

    /// Appends `MSG <seq> <unix_ms> <from> <text>\n`. `from` must be a valid
    /// client id and `text` valid frame text: the caller checked both.
    pub fn push(&mut self, seq: Seq, unix_ms: u64, from: &str, text: &[u8]) {
        put_msg_head_raw(&mut self.buf, seq, unix_ms, from);
        self.buf.put_slice(text);
        self.buf.put_u8(b'\n');
        self.count += 1;
        self.before = self.newest;
        self.newest = seq;
    }

    /// Notes a stored message of the reader's own: read, left out.
    pub fn skip(&mut self) {
        self.skipped += 1;
    }

    /// Like [`BacklogWriter::push`], unless that would take the frames over
    /// `max_bytes` when there already is one: then writes nothing and
    /// returns false (a backlog holds at least one message, however big).
    pub fn push_within(
        &mut self,
        seq: Seq,
        unix_ms: u64,
        from: &str,
        text: &[u8],
        max_bytes: usize,
    ) -> bool {
        let before = self.buf.len();
        self.push(seq, unix_ms, from, text);
        if self.count > 1 && self.buf.len() > max_bytes {
            self.buf.truncate(before);
            self.count -= 1;
            self.newest = self.before;
            return false;
        }
        true
    }

    /// A writer that writes into `buf`'s spare room (growing it when
    /// needed): with [`BacklogWriter::finish_into`] one buffer serves read
    /// after read, so reading a long backlog does not fault in fresh memory
    /// for every chunk.
    pub fn reusing(mut buf: BytesMut, bytes: usize) -> BacklogWriter {
        buf.clear();
        buf.reserve(bytes);
        BacklogWriter {
            buf,
            count: 0,
            skipped: 0,
            newest: Seq::ZERO,
            before: Seq::ZERO,
        }
    }

    /// Like [`BacklogWriter::finish`], and hands back the buffer's spare
    /// room for [`BacklogWriter::reusing`]: once the backlog is dropped the
    /// whole allocation is free to be written again.
    pub fn finish_into(mut self, last: Seq) -> (Backlog, BytesMut) {
        let frames = self.buf.split().freeze();
        let backlog = Backlog {
            frames,
            count: self.count,
            read: self.read(),
            newest: self.newest,
            last,
        };
        (backlog, self.buf)
    }

    /// Stored messages gone through so far: written or skipped.
    pub fn read(&self) -> usize {
        self.count + self.skipped
    }

    /// The backlog, the read having got up to `last`.
    pub fn finish(self, last: Seq) -> Backlog {
        self.finish_into(last).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, from: &str, text: &str) -> Message {
        Message::new(
            Seq(seq),
            1_000 + seq,
            ClientId::new(from).unwrap(),
            text.as_bytes(),
        )
    }

    #[test]
    fn frames_are_those_of_the_messages_and_parse_back() {
        let ms = vec![msg(1, "a", "one"), msg(2, "b", "two"), msg(3, "a", "three")];
        let mut w = BacklogWriter::with_capacity(16);
        for m in &ms {
            w.push(m.seq(), m.unix_ms(), m.from().as_str(), m.text());
        }
        let b = w.finish(Seq(3));
        let joined: Vec<u8> = ms.iter().flat_map(|m| m.frame().to_vec()).collect();
        assert_eq!(&b.frames()[..], &joined[..]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.messages().unwrap(), ms);
    }

    #[test]
    fn the_readers_own_messages_are_left_out_but_read_past() {
        let ms = vec![msg(4, "a", "x"), msg(5, "b", "y"), msg(6, "b", "z")];
        let b = Backlog::of_messages(&ms, &ClientId::new("b").unwrap(), Seq(9));
        assert_eq!(b.messages().unwrap(), vec![ms[0].clone()]);
        assert_eq!(b.last(), Seq(6));
        assert_eq!(b.newest(), Seq(4));
        assert_eq!(b.read(), 3);
        let none = Backlog::of_messages(&[], &ClientId::new("b").unwrap(), Seq(9));
        assert!(none.is_empty());
        assert_eq!(none.last(), Seq(9));
    }
}
