//! Stdin as a stream of bounded lines: a line longer than the limit is
//! skipped whole instead of growing a buffer without end.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::machine::StdinEvent;

/// Reads lines of at most `max` bytes; safe to cancel between calls (as a
/// `select!` branch), since its progress lives in the struct.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    line: Vec<u8>,
    /// Skipping the rest of a line that is too long.
    discarding: bool,
    ended: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader of lines of at most `max` bytes (terminator excluded).
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner,
            max,
            line: Vec::new(),
            discarding: false,
            ended: false,
        }
    }

    /// The next event: a line, a skipped line, or the end (once).
    pub async fn next(&mut self) -> StdinEvent {
        if self.ended {
            return StdinEvent::End(None);
        }
        loop {
            let chunk = match self.inner.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.ended = true;
                    return StdinEvent::End(Some(e.to_string()));
                }
            };
            if chunk.is_empty() {
                self.ended = true;
                if self.discarding {
                    return StdinEvent::TooLong;
                }
                if self.line.is_empty() {
                    return StdinEvent::End(None);
                }
                // A last line without a newline still counts.
                return StdinEvent::Line(std::mem::take(&mut self.line));
            }
            let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (chunk.len(), false),
            };
            if !self.discarding {
                if self.line.len() + take > self.max {
                    self.discarding = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(&chunk[..take]);
                }
            }
            self.inner.consume(take + usize::from(newline));
            if newline {
                if std::mem::take(&mut self.discarding) {
                    return StdinEvent::TooLong;
                }
                return StdinEvent::Line(std::mem::take(&mut self.line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(input: &'static [u8], max: usize) -> Vec<String> {
        // A tiny buffer, so lines span many reads.
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(3, input), max);
        let mut out = Vec::new();
        loop {
            match r.next().await {
                StdinEvent::Line(l) => out.push(String::from_utf8(l).unwrap()),
                StdinEvent::TooLong => out.push("<too long>".into()),
                StdinEvent::End(_) => return out,
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_skips_the_ones_over_the_limit() {
        assert_eq!(
            events(b"ab\nabcdefgh\n\nabcde\nlast", 5).await,
            ["ab", "<too long>", "", "abcde", "last"]
        );
        assert_eq!(events(b"abcdefgh", 5).await, ["<too long>"]);
        assert!(events(b"", 5).await.is_empty());
    }
}
