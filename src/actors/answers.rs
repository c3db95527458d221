//! The answers a session owes its client, in the order of the frames they
//! answer: an answer the registry still owes (`WELCOME`, `SENT`) holds back
//! the ones behind it. Counts what the session's reading pauses on: the
//! unanswered `SEND`s and their text bytes, and the bytes of answers ready
//! behind an owed one.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::net::ServerFrame;

/// What kind of registry answer a frame is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owed {
    /// `WELCOME` or a refusal, for `LOGIN`.
    Login,
    /// `SENT` or a refusal, for `SEND`.
    Send,
}

/// An answer owed to the client, in the order of its frames.
enum Answer {
    /// The registry has not answered yet.
    Awaiting(Owed),
    /// Encoded answers (one or more in a row) ready to go once every
    /// earlier one has gone.
    Ready(BytesMut),
}

/// The owed answers of one connection.
#[derive(Default)]
pub(super) struct Answers {
    queue: VecDeque<Answer>,
    /// Bytes of the `Ready` answers in `queue`.
    ready_bytes: usize,
    /// Text bytes of each unanswered `SEND`, oldest first, and their sum.
    send_sizes: VecDeque<usize>,
    send_bytes: usize,
}

impl Answers {
    /// Nothing is owed or waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Bytes of answers waiting behind an owed one.
    pub(super) fn ready_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// `SEND`s not answered yet.
    pub(super) fn unanswered_sends(&self) -> usize {
        self.send_sizes.len()
    }

    /// Text bytes of the `SEND`s not answered yet.
    pub(super) fn unanswered_send_bytes(&self) -> usize {
        self.send_bytes
    }

    /// A `LOGIN` was forwarded: its answer is owed.
    pub(super) fn owe_login(&mut self) {
        self.queue.push_back(Answer::Awaiting(Owed::Login));
    }

    /// A `SEND` of `text_bytes` was forwarded: its answer is owed.
    pub(super) fn owe_send(&mut self, text_bytes: usize) {
        self.send_sizes.push_back(text_bytes);
        self.send_bytes += text_bytes;
        self.queue.push_back(Answer::Awaiting(Owed::Send));
    }

    /// Answers a frame now: into `out` if nothing is owed before it,
    /// otherwise queued behind what is.
    pub(super) fn answer(&mut self, frame: ServerFrame, out: &mut BytesMut) {
        if self.queue.is_empty() {
            return frame.encode(out);
        }
        if !matches!(self.queue.back(), Some(Answer::Ready(_))) {
            self.queue.push_back(Answer::Ready(BytesMut::new()));
        }
        if let Some(Answer::Ready(buf)) = self.queue.back_mut() {
            let before = buf.len();
            frame.encode(buf);
            self.ready_bytes += buf.len() - before;
        }
    }

    /// The registry answered the oldest frame of kind `owed` still waiting
    /// (it answers each kind in order); `extra` follows the answer. What is
    /// no longer held back goes to `out`. False if nothing was owed.
    pub(super) fn fill(
        &mut self,
        owed: Owed,
        frame: ServerFrame,
        extra: Option<ServerFrame>,
        out: &mut BytesMut,
    ) -> bool {
        let Some(i) = self
            .queue
            .iter()
            .position(|a| matches!(a, Answer::Awaiting(o) if *o == owed))
        else {
            return false;
        };
        if owed == Owed::Send {
            let size = self.send_sizes.pop_front().unwrap_or(0);
            self.send_bytes -= size.min(self.send_bytes);
        }
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        if let Some(extra) = extra {
            extra.encode(&mut buf);
        }
        self.ready_bytes += buf.len();
        self.queue[i] = Answer::Ready(buf);
        while let Some(Answer::Ready(_)) = self.queue.front() {
            if let Some(Answer::Ready(buf)) = self.queue.pop_front() {
                self.ready_bytes -= buf.len();
                out.extend_from_slice(&buf);
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
        true
    }

    /// Forgets everything queued behind the owed `LOGIN` (a refused login
    /// answers nothing after it).
    pub(super) fn drop_after_login(&mut self) {
        let Some(i) = self
            .queue
            .iter()
            .position(|a| matches!(a, Answer::Awaiting(Owed::Login)))
        else {
            return;
        };
        self.queue.truncate(i + 1);
        let sends = self
            .queue
            .iter()
            .filter(|a| matches!(a, Answer::Awaiting(Owed::Send)))
            .count();
        self.send_sizes.truncate(sends);
        self.send_bytes = self.send_sizes.iter().sum();
        self.ready_bytes = self
            .queue
            .iter()
            .map(|a| match a {
                Answer::Ready(buf) => buf.len(),
                Answer::Awaiting(_) => 0,
            })
            .sum();
    }

    /// Forgets everything: the answers still owed will not come.
    pub(super) fn clear(&mut self) {
        *self = Answers::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ClientId, Seq};

    fn pong() -> ServerFrame {
        ServerFrame::Pong { token: None }
    }

    #[test]
    fn answers_behind_an_owed_one_are_counted_and_go_out_in_order() {
        let mut a = Answers::default();
        let mut out = BytesMut::new();
        a.answer(pong(), &mut out);
        assert_eq!(&out[..], b"PONG\n");
        out.clear();
        a.owe_login();
        a.owe_send(10);
        for _ in 0..3 {
            a.answer(pong(), &mut out);
        }
        assert!(out.is_empty());
        assert_eq!(a.ready_bytes(), 15);
        assert_eq!((a.unanswered_sends(), a.unanswered_send_bytes()), (1, 10));
        let id = ClientId::new("a").unwrap();
        let welcome = ServerFrame::Welcome { id, pending: 0 };
        assert!(a.fill(Owed::Login, welcome, None, &mut out));
        assert_eq!(&out[..], b"WELCOME a 0\n");
        assert!(a.fill(
            Owed::Send,
            ServerFrame::Sent { seq: Seq(1) },
            None,
            &mut out
        ));
        assert_eq!(&out[..], b"WELCOME a 0\nSENT 1\nPONG\nPONG\nPONG\n");
        assert_eq!((a.ready_bytes(), a.unanswered_sends()), (0, 0));
        assert_eq!(a.unanswered_send_bytes(), 0);
        assert!(a.is_empty());
        assert!(!a.fill(Owed::Send, pong(), None, &mut out));
    }

    #[test]
    fn a_refused_login_drops_what_waits_behind_it() {
        let mut a = Answers::default();
        let mut out = BytesMut::new();
        a.owe_login();
        a.owe_send(5);
        a.answer(pong(), &mut out);
        a.drop_after_login();
        assert_eq!((a.ready_bytes(), a.unanswered_sends()), (0, 0));
        assert_eq!(a.unanswered_send_bytes(), 0);
        a.clear();
        assert!(a.is_empty());
    }
}
