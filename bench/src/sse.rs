//! Reading a Server-Sent Events stream incrementally: the response head, an optional chunked
//! transfer coding (Nchan's EventSource answers are chunked, comet-quotes' are close-delimited),
//! and the events. Pure state machines over bytes; the socket loop is in `client`.

/// Undoes `Transfer-Encoding: chunked` on bytes as they arrive.
#[derive(Debug, Default)]
pub struct Dechunk {
    /// Bytes of the current chunk still to come (0: a size line is next).
    left: usize,
    /// The CRLF after a chunk's data is still to be skipped.
    after_data: bool,
    /// The last (zero-size) chunk was seen.
    pub done: bool,
}

impl Dechunk {
    /// Move the payload out of `raw` into `out`, leaving an incomplete size line in `raw`.
    pub fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let mut pos = 0;
        while pos < raw.len() && !self.done {
            if self.left > 0 {
                let n = self.left.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + n]);
                pos += n;
                self.left -= n;
                if self.left == 0 {
                    self.after_data = true;
                }
                continue;
            }
            let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") else {
                break; // an incomplete line: wait for more
            };
            let line = &raw[pos..pos + eol];
            pos += eol + 2;
            if self.after_data {
                if !line.is_empty() {
                    return Err("chunk data not followed by CRLF");
                }
                self.after_data = false;
                continue;
            }
            let size = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split(';').next())
                .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                .ok_or("bad chunk size line")?;
            if size == 0 {
                self.done = true;
            }
            self.left = size;
        }
        raw.drain(..pos);
        Ok(())
    }
}

/// One dispatched event: its `id` (if any) and its data lines joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub data: Vec<u8>,
}

/// Take every complete event out of `body` (the decoded stream), leaving a partial one there.
/// Comments, `retry:` and blank-data blocks dispatch nothing.
pub fn take_events(body: &mut Vec<u8>, events: &mut Vec<Event>) {
    let mut start = 0;
    while let Some(end) = body[start..].windows(2).position(|w| w == b"\n\n") {
        let block = &body[start..start + end];
        start += end + 2;
        let mut id = None;
        let mut data: Option<Vec<u8>> = None;
        for line in block.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b":") {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &b""[..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match field {
                b"id" => id = Some(String::from_utf8_lossy(value).into_owned()),
                b"data" => {
                    let d = data.get_or_insert_with(Vec::new);
                    if !d.is_empty() {
                        d.push(b'\n');
                    }
                    d.extend_from_slice(value);
                }
                _ => {}
            }
        }
        if let Some(data) = data {
            events.push(Event { id, data });
        }
    }
    body.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_anywhere_decode_to_the_same_bytes() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunk::default();
            let (mut raw, mut out) = (wire[..split].to_vec(), Vec::new());
            d.feed(&mut raw, &mut out).unwrap();
            raw.extend_from_slice(&wire[split..]);
            d.feed(&mut raw, &mut out).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.done);
        }
    }

    #[test]
    fn events_are_taken_whole_and_comments_skipped() {
        let mut body =
            b"retry: 2000\n:\n\nid: 7\ndata: {\"a\":1}\n\n:\nid: 8\ndata: x\ndata: y\n\nid: 9\nda"
                .to_vec();
        let mut events = Vec::new();
        take_events(&mut body, &mut events);
        assert_eq!(
            events,
            [
                Event {
                    id: Some("7".into()),
                    data: b"{\"a\":1}".to_vec()
                },
                Event {
                    id: Some("8".into()),
                    data: b"x\ny".to_vec()
                },
            ]
        );
        assert_eq!(body, b"id: 9\nda");
    }
}
