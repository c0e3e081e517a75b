//! Minimal HTTP/1.1 client pieces for the benchmarks: loopback-only URL parsing and a keep-alive
//! response reader (status line, headers, Content-Length or chunked body) that works on any `Read`,
//! so the same code drives may coroutine sockets and plain blocking std sockets.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Where to send traffic: always an address in 127.0.0.0/8.
#[derive(Clone, Debug)]
pub struct Target {
    /// The socket address to connect to.
    pub addr: SocketAddr,
    /// The `Host` header value (`127.0.0.1:8090`).
    pub host: String,
    /// A path prefix from the URL without the trailing slash ("" for `http://127.0.0.1:8090/`).
    pub base: String,
}

/// Parses `http://HOST:PORT[/prefix]` and refuses anything that is not in 127.0.0.0/8, so a typo
/// can never turn the benchmark into traffic towards another machine.
pub fn parse_loopback_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        None => (authority, 80),
    };
    let ip: Ipv4Addr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .map_err(|_| format!("{url}: host must be a literal 127.x.y.z address"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "{url}: refusing a non-loopback target; only 127.0.0.0/8 is allowed"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(IpAddr::V4(ip), port),
        host: format!("{ip}:{port}"),
        base: path.trim_end_matches('/').to_string(),
    })
}

/// One parsed response. Only the headers the benchmarks use are kept.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// The server asked to close (or spoke HTTP/1.0 without keep-alive).
    pub close: bool,
    pub last_modified: Option<String>,
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// Upper bounds so a misbehaving server cannot make the client allocate without limit.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Bytes added to the buffer per read: answers here are mostly well under 1 KiB, and zeroing a
/// bigger scratch area on every read showed up in profiles.
const READ_CHUNK: usize = 2048;

/// Reads more bytes into `buf`; end of stream is an error because every caller expects more.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    let old = buf.len();
    buf.resize(old + READ_CHUNK, 0);
    let n = match r.read(&mut buf[old..]) {
        Ok(n) => n,
        Err(e) => {
            buf.truncate(old);
            return Err(e);
        }
    };
    buf.truncate(old + n);
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by server",
        ));
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response from `r`. `buf` carries bytes across calls on the same connection (there is no
/// pipelining here, so it is normally empty between responses). `head_request` is for HEAD, whose
/// answers carry a Content-Length but no body.
pub fn read_response<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> io::Result<Response> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too large"));
        }
        fill(r, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut resp = Response {
        status,
        close: version == "HTTP/1.0",
        ..Default::default()
    };
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                resp.close = true;
            } else if v.contains("keep-alive") {
                resp.close = false;
            }
        } else if name.eq_ignore_ascii_case("last-modified") {
            resp.last_modified = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("etag") {
            resp.etag = Some(value.to_string());
        }
    }
    buf.drain(..head_end + 4);

    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    if no_body {
        return Ok(resp);
    }
    if chunked {
        resp.body = read_chunked(r, buf)?;
    } else if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < len {
            fill(r, buf)?;
        }
        resp.body = buf.drain(..len).collect();
    } else {
        // No length: the body runs to the end of the connection.
        loop {
            match fill(r, buf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            if buf.len() > MAX_BODY {
                return Err(bad("body too large"));
            }
        }
        resp.body = std::mem::take(buf);
        resp.close = true;
    }
    Ok(resp)
}

fn read_chunked<R: Read>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return Err(bad("chunk size line too long"));
            }
            fill(r, buf)?;
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Skip trailers up to the empty line.
            loop {
                let end = loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        break i;
                    }
                    fill(r, buf)?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < size + 2 {
            fill(r, buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_must_be_loopback() {
        let t = parse_loopback_url("http://127.0.0.1:8090").unwrap();
        assert_eq!(t.host, "127.0.0.1:8090");
        assert_eq!(t.base, "");
        let t = parse_loopback_url("http://localhost:81/x/").unwrap();
        assert_eq!(t.addr.port(), 81);
        assert_eq!(t.base, "/x");
        assert!(parse_loopback_url("http://10.0.0.1:80").is_err());
        assert!(parse_loopback_url("http://example.com:80").is_err());
        assert!(parse_loopback_url("https://127.0.0.1:80").is_err());
    }

    #[test]
    fn reads_length_and_chunked_bodies_back_to_back() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nEtag: [1],-\r\n\r\nhello\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let mut src = &raw[..];
        let mut buf = Vec::new();
        let a = read_response(&mut src, &mut buf, false).unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"hello"[..]));
        assert_eq!(a.etag.as_deref(), Some("[1],-"));
        let b = read_response(&mut src, &mut buf, false).unwrap();
        assert_eq!(&b.body[..], b"abcde");
        let c = read_response(&mut src, &mut buf, false).unwrap();
        assert_eq!(c.status, 408);
        assert!(c.close);
        assert!(read_response(&mut src, &mut buf, false).is_err());
    }
}
