//! The in-memory tail of the log: the newest messages, kept so live fan-out
//! never reads the store.

use std::collections::VecDeque;

use crate::net::Message;
use crate::types::Seq;

/// The in-memory tail of the log: the newest messages, for live fan-out.
#[derive(Default)]
pub(super) struct Tail {
    messages: VecDeque<Message>,
    bytes: usize,
}

impl Tail {
    /// Seq of the oldest message held, or `None` when empty.
    pub(super) fn first_seq(&self) -> Option<Seq> {
        self.messages.front().map(Message::seq)
    }

    /// Whether every message with seq > `after` (up to the head) is held.
    pub(super) fn covers_after(&self, after: Seq, head: Seq) -> bool {
        match self.first_seq() {
            Some(first) => after.next() >= first,
            None => after >= head,
        }
    }

    /// Messages with seq > `after`, oldest first.
    pub(super) fn after(&self, after: Seq) -> impl Iterator<Item = &Message> {
        let skip = match self.first_seq() {
            Some(first) if after >= first => (after.0 - first.0 + 1) as usize,
            _ => 0,
        };
        self.messages.iter().skip(skip)
    }

    /// Forgets every message (the next one pushed need not follow them).
    pub(super) fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// Forgets the messages with seq <= `upto` (pruned from the store).
    pub(super) fn drop_upto(&mut self, upto: Seq) {
        while self.first_seq().is_some_and(|f| f <= upto) {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.frame().len();
            }
        }
    }

    pub(super) fn push(&mut self, m: Message, max_messages: usize, max_bytes: usize) {
        self.bytes += m.frame().len();
        self.messages.push_back(m);
        while self.messages.len() > max_messages.max(1) || self.bytes > max_bytes {
            match self.messages.pop_front() {
                Some(old) => self.bytes -= old.frame().len(),
                None => break,
            }
        }
    }
}
