//! Cross-origin requests (CORS): which pages on other origins may read `/api/`, and the headers
//! that tell their browsers so. Plain functions of the configuration and the request's `Origin`.
//!
//! - A listed origin gets `Access-Control-Allow-Origin: <it>`, `Access-Control-Allow-Credentials:
//!   true` (so `EventSource(url, {withCredentials: true})` and `fetch(url, {credentials:
//!   "include"})` may send the token cookie) and `Vary: Origin`.
//! - `*` lets any page read, without credentials: the browser then sends no cookie, and a token
//!   must come in the `Authorization` header or the `access_token` parameter.
//! - Any other origin, or none configured: no CORS header, so the browser keeps the answer from
//!   the page.

/// How long a browser may cache a preflight's answer, in seconds.
pub const PREFLIGHT_MAX_AGE: u32 = 600;

/// `--cors-origins`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No page on another origin may read (the default).
    #[default]
    None,
    /// Any page may read, without credentials.
    Any,
    /// Pages on these origins (normalized, see [`normalize_origin`]) may read, with credentials.
    List(Vec<String>),
}

/// `scheme://host[:port]` in the form browsers send it: scheme and host lower case, the default
/// port (80 for http, 443 for https) left out, no path, query or trailing slash.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not an origin (scheme://host[:port])"))?;
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return Err(format!("{text:?}: the scheme must be http or https")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) || rest.starts_with(':') {
        return Err(format!(
            "{text:?} is not an origin (scheme://host[:port], no path)"
        ));
    }
    // An IPv6 literal keeps its brackets; its colons are not a port.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    match port {
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{text:?}: bad port"))
        }
        Some(p) if p.parse::<u16>().is_err() => Err(format!("{text:?}: bad port")),
        Some(p) if p == default_port => Ok(format!("{scheme}://{host}")),
        Some(p) => Ok(format!("{scheme}://{host}:{p}")),
        None => Ok(format!("{scheme}://{host}")),
    }
}

impl CorsOrigins {
    /// `*`, or a comma-separated list of origins.
    pub fn parse(text: &str) -> Result<CorsOrigins, String> {
        let items: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        match items.as_slice() {
            [] => Ok(CorsOrigins::None),
            ["*"] => Ok(CorsOrigins::Any),
            _ if items.contains(&"*") => Err("`*` cannot be combined with origins".into()),
            _ => {
                let mut list: Vec<String> = Vec::new();
                for item in items {
                    let o = normalize_origin(item)?;
                    if !list.contains(&o) {
                        list.push(o);
                    }
                }
                Ok(CorsOrigins::List(list))
            }
        }
    }

    /// May a page on `origin` read the answers?
    fn allows(&self, origin: Option<&str>) -> bool {
        match self {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            // Compared as sent: browsers serialize origins in the normalized form.
            CorsOrigins::List(list) => origin.is_some_and(|o| list.iter().any(|l| l == o)),
        }
    }

    /// The headers every `/api/` answer to a request from `origin` carries.
    pub fn answer_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        match (self, origin) {
            _ if !self.allows(origin) => Vec::new(),
            (CorsOrigins::List(_), Some(o)) => vec![
                ("Access-Control-Allow-Origin", o.to_string()),
                ("Access-Control-Allow-Credentials", "true".into()),
                ("Vary", "Origin".into()),
            ],
            _ => vec![("Access-Control-Allow-Origin", "*".into())],
        }
    }

    /// What a preflight (`OPTIONS`) from `origin` is answered with besides
    /// [`CorsOrigins::answer_headers`]: the methods and request headers a page may use, and how
    /// long the browser may remember that. Nothing for an origin that may not read.
    pub fn preflight_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        if !self.allows(origin) {
            return Vec::new();
        }
        vec![
            ("Access-Control-Allow-Methods", "GET, POST".into()),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, Last-Event-ID".into(),
            ),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &[(&'static str, String)]) -> Vec<&'static str> {
        h.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn origins_normalize_as_browsers_send_them() {
        let n = |s| normalize_origin(s);
        assert_eq!(
            n("HTTPS://App.Example.com/"),
            Ok("https://app.example.com".into())
        );
        assert_eq!(n("https://a.com:443"), Ok("https://a.com".into()));
        assert_eq!(n("http://a.com:8080"), Ok("http://a.com:8080".into()));
        assert_eq!(n("http://[::1]:3000"), Ok("http://[::1]:3000".into()));
        assert_eq!(n("http://[::1]"), Ok("http://[::1]".into()));
        for bad in [
            "a.com",
            "ftp://a.com",
            "https://a.com/path",
            "https://",
            "https://a.com:99999",
            "https://a.com:",
            "https://u@a.com",
            "null",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_listed_origin_gets_itself_credentials_and_vary() {
        let c = CorsOrigins::parse("https://a.com, http://localhost:3000").unwrap();
        let h = c.answer_headers(Some("http://localhost:3000"));
        assert_eq!(
            h,
            vec![
                (
                    "Access-Control-Allow-Origin",
                    "http://localhost:3000".to_string()
                ),
                ("Access-Control-Allow-Credentials", "true".into()),
                ("Vary", "Origin".into()),
            ]
        );
        assert_eq!(
            names(&c.preflight_headers(Some("https://a.com"))),
            [
                "Access-Control-Allow-Methods",
                "Access-Control-Allow-Headers",
                "Access-Control-Max-Age"
            ]
        );
    }

    #[test]
    fn other_origins_and_no_flag_get_nothing() {
        let c = CorsOrigins::parse("https://a.com").unwrap();
        assert!(c.answer_headers(Some("https://b.com")).is_empty());
        assert!(c.answer_headers(Some("null")).is_empty());
        assert!(c.answer_headers(None).is_empty());
        assert!(c.preflight_headers(Some("https://b.com")).is_empty());
        assert!(CorsOrigins::None
            .answer_headers(Some("https://a.com"))
            .is_empty());
    }

    #[test]
    fn star_allows_any_page_without_credentials() {
        let c = CorsOrigins::parse("*").unwrap();
        assert_eq!(
            c.answer_headers(Some("https://x.org")),
            vec![("Access-Control-Allow-Origin", "*".to_string())]
        );
        assert_eq!(c.answer_headers(None).len(), 1);
        assert!(CorsOrigins::parse("*, https://a.com").is_err());
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
    }
}
