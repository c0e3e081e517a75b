//! Routing: plain functions from a [`Request`] to a [`Response`], no sockets.
//! A held request parks on the [`Hold`] the connection layer lends it; a stream is handed back
//! to the connection layer to run (`stream`). Who may read and publish is `auth`'s to say, which
//! pages on other origins may read is `cors`'s; both are applied here, in one place each.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::assets;
use crate::book::{now_micros, Answer, Symbol};
use crate::display;
use crate::error::ApiError;
use crate::metrics::Reason;
use crate::reply::{error_reply, Reply};
use crate::request::{
    parse_cursor, parse_publish, parse_symbols, parse_timeout, ConnState, Query, Request,
};
use crate::sse;
use crate::stream::Stream;
use crate::waiter::Hold;

/// What the connection layer does with a request.
pub enum Response<'a> {
    /// Write this reply.
    Reply(Reply),
    /// Start this Server-Sent Events stream (`stream::serve`).
    Stream(Stream<'a>),
    /// The client closed the connection while its poll was held: write nothing, close.
    ClientGone,
}

/// Answer one request. The only blocking route is `/api/poll`, which parks on `hold`; it takes
/// the request by value so a held poll can drop it first (memory per held poll). `conn` is what
/// the connection layer keeps for this connection across its requests.
pub fn handle<'a>(
    app: &'a App,
    mut req: Box<Request>,
    hold: &dyn Hold,
    conn: &mut ConnState,
) -> Response<'a> {
    let origin = req.origin.take();
    let api = req.path.starts_with("/api/");
    let mut response = if api && req.method == "OPTIONS" {
        Response::Reply(preflight(app, origin.as_deref()))
    } else {
        route(app, req, hold, conn).unwrap_or_else(|e| Response::Reply(refuse(app, &e)))
    };
    match &mut response {
        Response::Reply(reply) => app.metrics.count_request(reply.status),
        Response::Stream(_) => app.metrics.count_request(200),
        Response::ClientGone => {}
    }
    // Every /api/ answer, refusals included, so a page on a listed origin can read why.
    if api {
        let cors = app.config.cors_origins.answer_headers(origin.as_deref());
        match &mut response {
            Response::Reply(reply) => reply.headers.extend(cors),
            Response::Stream(stream) => stream.headers.extend(cors),
            Response::ClientGone => {}
        }
    }
    response
}

/// `OPTIONS` on `/api/`: a CORS preflight (or a plain OPTIONS), answered with what a page may
/// send; `handle` adds the headers every `/api/` answer gets.
fn preflight(app: &App, origin: Option<&str>) -> Reply {
    let mut reply = Reply::no_content().header("Allow", "GET, HEAD, POST, OPTIONS".into());
    reply
        .headers
        .extend(app.config.cors_origins.preflight_headers(origin));
    reply
}

/// The reply to a refused request; a refused credential is counted by its reason.
fn refuse(app: &App, e: &ApiError) -> Reply {
    app.metrics.count_auth_refused(e);
    error_reply(e)
}

/// May the bearer of `token` read `names`? `Ok(None)`: they are all public; `Ok(Some(at))`:
/// yes, until the token expires at `at`, on the monotonic clock waits use. JWTs' `exp` is on
/// the Unix clock: both clocks are read together, before the check, so that the time a first
/// check of the signature takes cannot move `at` past the expiry.
fn read_until(
    app: &App,
    token: Option<&str>,
    names: &[String],
) -> Result<Option<Instant>, ApiError> {
    let (now_us, now) = (now_micros(), Instant::now());
    let exp_us = app.auth.check_read(token, names, now_us)?;
    Ok(exp_us.map(|exp| now + Duration::from_micros(exp.saturating_sub(now_us))))
}

/// A poll's symbols, cursor, hold time and, with a token, until when it may read.
type PollParams<'a> = (Vec<&'a Symbol>, Option<u64>, Duration, Option<Instant>);

/// A poll's parameters from its query, checked against its token: the symbols, the cursor, how
/// long to hold, and until when the token allows reading. What is parsed on the way is freed on
/// return.
fn poll_params<'a>(app: &'a App, req: &Request) -> Result<PollParams<'a>, ApiError> {
    let q = Query::parse(&req.query);
    let names = parse_symbols(q.get("symbols"), app.config.max_symbols_per_request)?;
    let cursor = parse_cursor(q.get("cursor"))?;
    let timeout = parse_timeout(
        q.get("timeout"),
        app.config.poll_timeout,
        app.config.max_poll_timeout,
    )?;
    let expires = read_until(app, req.read_token(&q), &names)?;
    Ok((app.book.resolve(&names)?, cursor, timeout, expires))
}

/// GET (or HEAD) only: a 405 naming them otherwise.
fn only_get(req: &Request) -> Result<(), ApiError> {
    if req.method == "GET" || req.method == "HEAD" {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" })
    }
}

/// Not inlined into `handle`, nor `poll` into it: see `poll`.
#[inline(never)]
fn route<'a>(
    app: &'a App,
    req: Box<Request>,
    hold: &dyn Hold,
    conn: &mut ConnState,
) -> Result<Response<'a>, ApiError> {
    if req.path.starts_with("/api/") && !app.has_book() {
        // A cluster node that has not loaded the quotes from Redis yet.
        return Err(ApiError::NotReady);
    }
    match req.path.as_str() {
        "/api/poll" => poll(app, req, hold),
        "/api/stream" => stream(app, &req),
        "/api/display-delay" => display_report(app, &req, conn).map(Response::Reply),
        "/debug/panic" if app.config.test_panic_route => test_panic(app, &req, hold),
        path => route_reply(app, &req, path).map(Response::Reply),
    }
}

/// `GET /api/poll`: hold until one of the symbols changes past the cursor, or the timeout.
///
/// Not inlined, nor `route` into `handle`: a held poll keeps resident every page of its
/// coroutine stack it ever touched, and with every route inlined into one frame, that frame was
/// as large as all of theirs together. With these frames apart and the request boxed, a held
/// poll's deepest point went from 536 to 400 words (4288 to 3200 bytes), one 4 KiB page of
/// stack instead of two, and 12.37 to 8.37 KiB RSS per held poll in w3 (bench/README.md, "...
/// memory per held poll"; `tests/held_poll_memory.rs` keeps it so).
#[inline(never)]
fn poll<'a>(app: &'a App, req: Box<Request>, hold: &dyn Hold) -> Result<Response<'a>, ApiError> {
    only_get(&req)?;
    let lane = req.lane;
    let (symbols, cursor, timeout, expires) = poll_params(app, &req)?;
    // The request is freed before the poll parks, as everything poll_params parsed on
    // the way (the query, the names): a held poll keeps only what it waits with
    // (measured: 8.94 -> 8.23 KB RSS per held poll). With the names freed only after
    // the wake instead (b3268a5), malloc and free took 6.3% of the one-worker fan-out's
    // CPU samples against 3.3% (perf; bench/README.md, "Same-session A/B").
    drop(req);
    // A poll is never held past its token's expiry: it is answered 401 then.
    let wait = match expires {
        Some(at) => timeout.min(at.saturating_duration_since(Instant::now())),
        None => timeout,
    };
    match app.book.poll(&symbols, cursor, wait, lane, hold) {
        Some(a)
            if a.reason == Reason::Timeout && expires.is_some_and(|at| Instant::now() >= at) =>
        {
            Err(ApiError::ExpiredToken)
        }
        Some(answer) => Ok(Response::Reply(answer_reply(answer))),
        None => Ok(Response::ClientGone),
    }
}

/// `GET /api/stream`: the checked parameters of a Server-Sent Events stream; the connection
/// layer serves it.
#[inline(never)]
fn stream<'a>(app: &'a App, req: &Request) -> Result<Response<'a>, ApiError> {
    if req.method != "GET" {
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    let q = Query::parse(&req.query);
    let names = parse_symbols(q.get("symbols"), app.config.max_symbols_per_request)?;
    // A reconnecting browser sends Last-Event-ID while its URL still has the first cursor.
    let cursor = match &req.last_event_id {
        Some(id) => Some(sse::parse_last_event_id(id)?),
        None => parse_cursor(q.get("cursor"))?,
    };
    let expires = read_until(app, req.read_token(&q), &names)?;
    Ok(Response::Stream(Stream {
        symbols: app.book.resolve(&names)?,
        cursor,
        lane: req.lane,
        expires,
        headers: Vec::new(),
    }))
}

/// `POST /api/display-delay`: a page's sample of display and arrival delays, into the histograms
/// (`display`). With a JWT key, only a reader with a valid token may report.
fn display_report(app: &App, req: &Request, conn: &mut ConnState) -> Result<Reply, ApiError> {
    if req.method != "POST" {
        return Err(ApiError::MethodNotAllowed { allow: "POST" });
    }
    if !app.config.display_reports {
        return Err(ApiError::ReportsOff);
    }
    let m = &app.metrics;
    if app.auth.guards_reads() {
        let q = Query::parse(&req.query);
        let token = req.read_token(&q).ok_or(ApiError::MissingToken)?;
        app.auth.grant(token, now_micros())?;
    }
    let now = Instant::now();
    if !display::connection_may_report(conn.last_report, now) || !app.display_limits.admit(now) {
        m.display_reports_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::TooManyReports);
    }
    let samples = display::parse_report(&req.body).inspect_err(|_| {
        m.display_reports_refused.fetch_add(1, Ordering::Relaxed);
    })?;
    for s in &samples {
        m.arrival_delay.observe(s.arrival);
        m.display_delay.observe(s.display);
    }
    conn.last_report = Some(now);
    m.display_reports_accepted.fetch_add(1, Ordering::Relaxed);
    Ok(Reply::no_content())
}

/// The routes answered at once with a [`Reply`].
fn route_reply(app: &App, req: &Request, path: &str) -> Result<Reply, ApiError> {
    let get = req.method == "GET" || req.method == "HEAD";
    match path {
        "/api/symbols" => {
            only_get(req)?;
            let names = app.book.symbol_names();
            let names: Vec<&str> = names.iter().map(|s| &**s).collect();
            let body = serde_json::json!({ "symbols": names });
            Ok(Reply::json(200, body.to_string().into_bytes()))
        }
        "/api/quotes" if req.method == "POST" => publish(app, req),
        "/api/quotes" => {
            if !get {
                return Err(ApiError::MethodNotAllowed {
                    allow: "GET, HEAD, POST",
                });
            }
            let q = Query::parse(&req.query);
            let names = parse_symbols(q.get("symbols"), app.config.max_symbols_per_request)?;
            app.auth
                .check_read(req.read_token(&q), &names, now_micros())?;
            let symbols = app.book.resolve(&names)?;
            Ok(answer_reply(app.book.snapshot(&symbols)))
        }
        // The server's clock, for pages that measure their display delay (`display`): they take
        // the offset of their own clock from a few of these, and whether to report at all.
        "/api/time" => {
            only_get(req)?;
            let body = serde_json::json!({
                "now": now_micros(),
                "reports": app.config.display_reports,
            });
            Ok(Reply::json(200, body.to_string().into_bytes()))
        }
        // For load balancers and orchestrators: the process serves / it serves current data.
        "/healthz" => {
            only_get(req)?;
            Ok(Reply::json(200, br#"{"status":"ok"}"#.to_vec()))
        }
        "/readyz" => {
            only_get(req)?;
            Ok(match app.readiness() {
                Ok(()) => Reply::json(200, br#"{"status":"ready"}"#.to_vec()),
                Err(why) => Reply::json(
                    503,
                    serde_json::json!({ "status": "not ready", "why": why })
                        .to_string()
                        .into_bytes(),
                )
                .header("Retry-After", "1".to_string()),
            })
        }
        "/metrics" => {
            only_get(req)?;
            Ok(Reply::text(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                app.metrics.render().into_bytes(),
            ))
        }
        path => {
            let asset = assets::lookup(path).ok_or_else(|| ApiError::NotFound(path.into()))?;
            only_get(req)?;
            Ok(asset.reply(req.if_none_match.as_deref()))
        }
    }
}

/// `--test-panic-route` only: panic, at once or (`at=hold&symbols=S`) while parked as a long-poll,
/// with a waiter on `S`'s lists, a deadline with the sweeper and the waiting gauge up, to show
/// that a panic in a connection's code leaks none of them.
fn test_panic<'a>(app: &App, req: &Request, hold: &dyn Hold) -> Result<Response<'a>, ApiError> {
    let q = Query::parse(&req.query);
    if q.get("at") == Some("hold") {
        let names = parse_symbols(q.get("symbols"), app.config.max_symbols_per_request)?;
        let symbols = app.book.resolve(&names)?;
        let hold = PanicOnPark(hold);
        let timeout = Duration::from_secs(60);
        let _ = app.book.poll(&symbols, None, timeout, req.lane, &hold);
    }
    panic!("the test panic route");
}

/// The connection's own hold, but one that panics when parked (`test_panic`).
struct PanicOnPark<'h>(&'h dyn Hold);

impl Hold for PanicOnPark<'_> {
    fn parker(&self) -> crate::waiter::Parker {
        self.0.parker()
    }

    fn park(&self) -> crate::waiter::Parked {
        panic!("the test panic route, while parked");
    }
}

fn answer_reply(a: Answer) -> Reply {
    Reply::json(200, a.json)
}

/// `POST /api/quotes`: the credential first (an unauthenticated body is not even parsed), then
/// the body, then whether the credential covers every symbol in it.
fn publish(app: &App, req: &Request) -> Result<Reply, ApiError> {
    let scope = app.auth.publisher(req.bearer(), now_micros())?;
    let updates = parse_publish(&req.body)?;
    scope.check(updates.iter().map(|(s, _)| s.as_str()))?;
    let seq = app.publish(&updates)?;
    Ok(Reply::json(
        200,
        serde_json::json!({ "seq": seq }).to_string().into_bytes(),
    ))
}
