//! A minimal Server-Sent Events client for the stream tests: opens `GET /api/stream`, reads the
//! response head, then one event (or comment) at a time.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// One dispatched event, or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event {
        id: Option<u64>,
        data: Value,
    },
    /// An event with an `event:` type other than `message` (e.g. `expired`).
    Named {
        event: String,
        data: Value,
    },
    Comment(String),
    Retry(u64),
}

pub struct SseClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    /// A pause before every line read: a slow reader, whose socket backs up.
    per_line: Option<Duration>,
}

impl SseClient {
    /// Open a stream with the given query and extra headers; reads the response head. A non-200
    /// answer is read whole (its body is in `error_body`).
    pub fn open(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> SseClient {
        let stream = TcpStream::connect(addr).expect("connect");
        Self::open_on(stream, query, headers)
    }

    pub fn open_on(mut stream: TcpStream, query: &str, headers: &[(&str, &str)]) -> SseClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut req = format!(
            "GET /api/stream?{query} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n"
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        SseClient {
            status,
            headers,
            reader,
            per_line: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        super::find_header(&self.headers, name)
    }

    /// Read slowly from now on: pause `per_line` before every line.
    pub fn throttle(&mut self, per_line: Duration) {
        self.per_line = Some(per_line);
    }

    /// The body of a non-stream (error) answer.
    pub fn error_body(&mut self) -> Value {
        let len: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .expect("an error answer has a length");
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut self.reader, &mut body).expect("error body");
        serde_json::from_slice(&body).expect("JSON error body")
    }

    /// The next item; `None` when the server closed the stream.
    pub fn next(&mut self) -> Option<Item> {
        let mut id = None;
        let mut event: Option<String> = None;
        let mut data: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            if let Some(pause) = self.per_line {
                std::thread::sleep(pause);
            }
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end_matches('\n');
            if l.is_empty() {
                if let Some(d) = data.take() {
                    let data = serde_json::from_str(&d).expect("event data is JSON");
                    return Some(match event.take().filter(|e| e != "message") {
                        Some(event) => Item::Named { event, data },
                        None => Item::Event { id, data },
                    });
                }
                continue;
            }
            if let Some(c) = l.strip_prefix(':') {
                return Some(Item::Comment(c.trim().to_string()));
            }
            let (field, value) = l.split_once(':').unwrap_or((l, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.parse().ok(),
                "event" => event = Some(value.to_string()),
                "data" => {
                    let d = data.get_or_insert_with(String::new);
                    if !d.is_empty() {
                        d.push('\n');
                    }
                    d.push_str(value);
                }
                "retry" => return Some(Item::Retry(value.parse().expect("retry ms"))),
                _ => {}
            }
        }
    }

    /// The next event, skipping comments and retry lines; panics if the stream ends first.
    pub fn next_event(&mut self) -> (u64, Value) {
        loop {
            match self.next() {
                Some(Item::Event { id, data }) => return (id.expect("events carry an id"), data),
                Some(_) => {}
                None => panic!("the stream ended before the next event"),
            }
        }
    }

    /// Read until the server closes the stream (bounded by the read timeout).
    pub fn read_to_end(&mut self) {
        while self.next().is_some() {}
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
}

/// Symbol -> price of every quote in an event's data (the same JSON as a poll answer).
pub fn prices(data: &Value) -> Vec<(String, f64)> {
    super::quote_prices(data)
}
