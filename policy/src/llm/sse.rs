//! Incremental server-sent events parser that keeps each event's exact bytes.
//!
//! Why keep the bytes: the proxy forwards what the provider sent, unchanged, and only needs to
//! read events to meter them (and to drop the one usage chunk a client did not ask for).
//! Re-serializing events would change bytes clients may depend on. Every block ended by a blank
//! line is returned, even one with no data (a comment or keep-alive), so forwarding the `raw` of
//! every event, then [`SseParser::take_rest`], reproduces the stream byte for byte.
//!
//! Follows the WHATWG event-stream rules: `\n`, `\r\n` and `\r` line ends; lines starting with
//! `:` are comments; `field:value` with one optional space after the colon; several `data` lines
//! joined with `\n`; `id` and `retry` kept in `raw` only. Invalid UTF-8 is replaced, not refused.

/// One server-sent event, with the exact bytes it arrived as (including its terminating blank
/// line), so a proxy can forward it unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The bytes of the event, up to and including its blank line.
    pub raw: Vec<u8>,
    /// The `event:` name, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n` (empty when there were none).
    pub data: String,
}

/// A stream that cannot be parsed within its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event (or the unfinished tail) is larger than the configured limit.
    #[error("server-sent event larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Incremental parser: bytes in any chunking → complete events. Handles \n, \r\n and \r line
/// ends, comment lines (":"), multi-line data (joined with "\n"), "data:" with/without the
/// space. Bounded: an event larger than `max_event_bytes` is an error, after which the stream
/// should be abandoned.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes not yet returned as events: the unfinished event starts at `start`.
    buf: Vec<u8>,
    /// Start of the current event in `buf` (0 between pushes).
    start: usize,
    /// Start of the current line in `buf`.
    line: usize,
    /// Where to resume looking for a line end (so a long line is scanned once).
    seek: usize,
    /// The current event's name and data so far.
    event: Option<String>,
    data: String,
    has_data: bool,
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser refusing events above `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            start: 0,
            line: 0,
            seek: 0,
            event: None,
            data: String::new(),
            has_data: false,
            max_event_bytes,
        }
    }

    /// Adds `chunk` and returns the events it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        self.scan(false, &mut out)?;
        if self.buf.len() - self.start > self.max_event_bytes {
            return Err(self.too_large());
        }
        // Drop what was returned; the rest is one partial event, at most the limit.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.line -= self.start;
            self.seek -= self.start;
            self.start = 0;
        }
        Ok(out)
    }

    /// Bytes of an unfinished event still held (forwarded as-is when the stream ends). Resets
    /// the parser.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.reset();
        rest
    }

    /// At the end of the stream: the held bytes read as final events (a trailing `\r` taken as a
    /// line end, a last line without its line end, an event without its blank line), so a meter
    /// still sees them. Their `raw` together is exactly the held bytes; empty when nothing is
    /// held. Resets the parser. An alternative to [`Self::take_rest`] for callers that meter the
    /// tail.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        // The bytes were size-checked when pushed, and the last event is at most as large.
        let _ = self.scan(true, &mut out);
        if self.line < self.buf.len() {
            let line = &self.buf[self.line..];
            field(line, &mut self.event, &mut self.data, &mut self.has_data);
        }
        if self.start < self.buf.len() {
            let raw = self.buf[self.start..].to_vec();
            out.push(self.dispatch(raw));
        }
        self.reset();
        out
    }

    /// Reads every complete line from `seek`; a blank line ends an event. A `\r` at the very
    /// end may be the first half of `\r\n`, so it waits for the next byte unless `eof`.
    fn scan(&mut self, eof: bool, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while let Some(rel) = self.buf[self.seek..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = self.seek + rel;
            let next = match (self.buf[end], self.buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => end + 2,
                (b'\r', None) if !eof => {
                    self.seek = end;
                    return Ok(());
                }
                _ => end + 1,
            };
            if end == self.line {
                if next - self.start > self.max_event_bytes {
                    return Err(self.too_large());
                }
                let raw = self.buf[self.start..next].to_vec();
                out.push(self.dispatch(raw));
                self.start = next;
            } else {
                let line = &self.buf[self.line..end];
                field(line, &mut self.event, &mut self.data, &mut self.has_data);
            }
            self.line = next;
            self.seek = next;
        }
        self.seek = self.buf.len();
        Ok(())
    }

    fn dispatch(&mut self, raw: Vec<u8>) -> SseEvent {
        self.has_data = false;
        SseEvent {
            raw,
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
        }
    }

    fn too_large(&self) -> SseError {
        SseError::TooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.line = 0;
        self.seek = 0;
        self.event = None;
        self.data.clear();
        self.has_data = false;
    }
}

/// Applies one non-blank line to the event being built.
fn field(line: &[u8], event: &mut Option<String>, data: &mut String, has_data: &mut bool) {
    if line.first() == Some(&b':') {
        return; // comment
    }
    let (name, value) = match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[][..]),
    };
    match name {
        b"event" => *event = Some(String::from_utf8_lossy(value).into_owned()),
        b"data" => {
            if *has_data {
                data.push('\n');
            }
            data.push_str(&String::from_utf8_lossy(value));
            *has_data = true;
        }
        _ => {} // id, retry, unknown: kept in raw only
    }
}

#[cfg(test)]
mod tests;
