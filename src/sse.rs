//! Server-Sent Events framing: the bytes of a stream's preamble, events and heartbeats, and the
//! `Last-Event-ID` a browser resumes with. Pure functions over bytes; the loop that writes them is
//! in `stream`.

use std::io::Write as _;
use std::time::Duration;

use crate::error::ApiError;

/// A comment line: keeps proxies with an idle timeout from cutting a quiet stream.
pub const HEARTBEAT: &[u8] = b":\n";

/// The last event of a stream whose reader's token expired: an `expired` event, which an
/// `EventSource`'s `onmessage` does not see, but `addEventListener("expired", ...)` does.
pub const EXPIRED: &[u8] = b"event: expired\ndata: {\"error\":\"token expired\"}\n\n";

/// What a stream starts with: how long a browser waits before it reconnects, and a comment, so
/// that browsers and proxies see the stream open before the first event.
pub fn preamble(retry: Duration, out: &mut Vec<u8>) {
    let _ = write!(out, "retry: {}\n:\n", retry.as_millis());
}

/// One event: `id: <id>` and the data, one `data:` line per line of it, then the blank line that
/// dispatches it.
pub fn event(id: u64, data: &[u8], out: &mut Vec<u8>) {
    let _ = writeln!(out, "id: {id}");
    // JSON from serde_json has no raw newlines, so this is one line; the loop keeps any other
    // data well framed.
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The cursor in a `Last-Event-ID` header: an event id this server wrote, a non-negative integer.
pub fn parse_last_event_id(value: &str) -> Result<u64, ApiError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| ApiError::BadLastEventId(value.chars().take(40).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_its_id_its_data_and_a_blank_line() {
        let mut out = Vec::new();
        event(42, br#"{"cursor":42,"quotes":[]}"#, &mut out);
        assert_eq!(out, b"id: 42\ndata: {\"cursor\":42,\"quotes\":[]}\n\n");
    }

    #[test]
    fn multi_line_data_gets_one_data_field_per_line() {
        let mut out = Vec::new();
        event(1, b"a\r\nb\nc", &mut out);
        assert_eq!(out, b"id: 1\ndata: a\ndata: b\ndata: c\n\n");
    }

    #[test]
    fn the_preamble_sets_the_retry_and_opens_with_a_comment() {
        let mut out = Vec::new();
        preamble(Duration::from_millis(2500), &mut out);
        assert_eq!(out, b"retry: 2500\n:\n");
    }

    #[test]
    fn last_event_id_must_be_a_cursor() {
        assert_eq!(parse_last_event_id(" 17 "), Ok(17));
        for bad in ["", "-1", "abc", "1.5", "99999999999999999999999"] {
            assert!(
                matches!(parse_last_event_id(bad), Err(ApiError::BadLastEventId(_))),
                "{bad:?}"
            );
        }
    }
}
