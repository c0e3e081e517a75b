//! The static files of `public/`, embedded at build time (see `build.rs`), served with ETags.

use crate::reply::{Body, Reply};

/// (URL path, bytes, quoted ETag) for every file under `public/`.
static FILES: &[(&str, &[u8], &str)] = include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The client module other sites' pages import (`public/comet.js`).
pub const MODULE: &str = "/comet.js";

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub bytes: &'static [u8],
    pub etag: &'static str,
}

/// The asset served at `path`; `/` is `/index.html`.
pub fn lookup(path: &str) -> Option<Asset> {
    let path = if path == "/" { "/index.html" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(path, bytes, etag)| Asset { path, bytes, etag })
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl Asset {
    /// 200 with the bytes, or 304 when the client's `If-None-Match` already names this version.
    /// `no-cache` makes browsers revalidate on every load, so a new build shows at once.
    pub fn reply(&self, if_none_match: Option<&str>) -> Reply {
        let fresh = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == self.etag || t == "*")
        });
        let mut headers = vec![("ETag", self.etag.to_string())];
        if self.path == MODULE {
            // Any page may import the client module: a module script is fetched in CORS mode,
            // so a page on another origin needs this to run it. The file is public code and
            // the fetch carries no credentials, so `*` gives nothing away.
            headers.push(("Access-Control-Allow-Origin", "*".to_string()));
        }
        Reply {
            status: if fresh { 304 } else { 200 },
            content_type: content_type(self.path),
            cache_control: "no-cache",
            headers,
            body: Body::Static(if fresh { b"" } else { self.bytes }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_serves_the_index_page() {
        let a = lookup("/").expect("public/index.html is embedded");
        assert_eq!(a.path, "/index.html");
        assert!(a.reply(None).content_type.starts_with("text/html"));
    }

    #[test]
    fn any_page_may_import_the_client_module_and_nothing_else() {
        let module = lookup(MODULE).expect("public/comet.js is embedded");
        let acao = |r: &Reply| {
            r.headers
                .iter()
                .any(|(n, v)| *n == "Access-Control-Allow-Origin" && v == "*")
        };
        assert!(acao(&module.reply(None)));
        assert!(acao(&module.reply(Some(module.etag))));
        assert!(!acao(&lookup("/").unwrap().reply(None)));
    }

    #[test]
    fn matching_etag_gives_not_modified() {
        let a = lookup("/").unwrap();
        assert_eq!(a.reply(Some(a.etag)).status, 304);
        assert_eq!(a.reply(Some("\"other\"")).status, 200);
        assert!(lookup("/nope.txt").is_none());
    }
}
