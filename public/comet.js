// comet.js: follow live quotes from a comet-quotes server in any page, and measure how late they are shown.
// One ES module, no dependencies, no build step; the server serves it at /comet.js. A page on another origin
// serves its own copy: the server sends static files without CORS headers, and module scripts need them.
//
//   import { subscribe } from "/comet.js";
//   const sub = subscribe({ url, symbols: ["IBM", "MSFT"], token, onQuote, onState });
//   sub.setSymbols(["IBM", "AAPL"]);
//   sub.stats();  // clock offset, delays, transport, cursor
//   sub.close();
//
// Options:
//   url             base URL of the quotes server; "" (the default) is this page's origin.
//   symbols         array of symbols.
//   token           a string, or a function returning a string or a promise of one. A function is asked once,
//                   then again only when the server refuses the token (401/403) or ends the stream because it
//                   expired; the subscription goes on from its cursor with the new one.
//   onQuote(quote, info)   quote {symbol, price, change, seq, ts}; info {kind, transport, cursor}, kind one of
//                   "snapshot" (the value when following began), "live" (a change as it happened) or
//                   "catchup" (a change that happened while the connection was down, delivered after it).
//   onState(state, detail) "connecting", "live", "reconnecting" (detail.wait: ms until the next try),
//                   "unauthorized" (detail.status 401/403 and detail.error; a new token did not help, nothing
//                   is retried), "idle" (no symbols), "closed". detail also has transport and fallback.
//   onDelay(quote, delays) for each live quote once the frame showing it is painted: {arrival, display} in ms.
//   transport       "auto" (default: stream, falling back to long-poll) or "poll" (long-poll only).
//   withCredentials send cookies to a quotes server on another origin (default false).
//   measureDelays   estimate the server's clock and measure delays (default true).
//   reportDelays    POST the display delays to the server (default false; only where /api/time allows it).
//
// Nothing is lost or repeated: every answer carries a cursor (the server's position in its changes) and the
// next request resumes from it, over either transport; a quote already delivered is never delivered again.

const BACKOFF_START_MS = 500;
const BACKOFF_CAP_MS = 10000;
// The server's `retry:` line: how long the browser waits before it reconnects a dropped stream by itself.
const STREAM_RETRY_MS = 2000;
// Failed attempts in a row left to the browser's own reconnect, which sends Last-Event-ID but never backs off.
// After that the module closes the stream and reconnects with backoff, the cursor in the URL instead.
const NATIVE_RETRIES = 2;
// A stream opened without a cursor starts with a snapshot at once: none within this means something between
// here and the server buffers the stream, and long-polls get through where it does not.
const FIRST_EVENT_MS = 5000;
const REQUEST_TIMEOUT_MS = 15000; // answered at once by the server: snapshots, /api/time, reports
// A poll waits at most 60 s on the server. No answer well after that: the connection is dead (half-open TCP,
// a laptop waking from sleep), so drop it and poll again.
const POLL_WATCHDOG_MS = 75000;
const CLOCK_ROUND_TRIPS = 5; // per estimate of the server's clock; the shortest one is kept
const CLOCK_EVERY_MS = 60000; // clocks drift: estimate again this often
const RECENT = 200; // live delays the percentiles of stats() are taken over
const REPORT_FIRST_MS = 2000; // the first report waits this long, to carry a few samples
const REPORT_EVERY_MS = 10000; // at most one report per this (the server takes one per 5 s per connection)
const REPORT_MAX_SAMPLES = 100; // the server's limit per report
const REPORT_MAX_MS = 60000; // the server refuses a report with a longer delay: a page that slept

// Exponential backoff with "equal jitter": the ceiling grows 0.5, 1, 2, 4, 8, 10, 10 … s and each wait is drawn
// from its upper half. When a server restarts, every page loses it at the same instant: random waits keep them
// from coming back in lockstep.
function backoffMs(failures) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * Math.pow(2, failures));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: no answer at all
  }
}

// Cursors and seqs are u64 values (microseconds today, which a double holds exactly). Their digits are kept as
// text, so that a cursor goes back to the server exactly as it came, and compared as text.
function cmpDigits(a, b) {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

// A poll answer or stream event, {cursor, quotes}, with the cursor's digits as they were sent.
function parseAnswer(text) {
  const body = JSON.parse(text);
  const m = /"cursor"\s*:\s*(\d+)/.exec(text);
  if (!body || !m || !Array.isArray(body.quotes)) throw new Error("not a {cursor, quotes} answer");
  return { cursor: m[1], quotes: body.quotes };
}

function summary(values) {
  const s = values.slice().sort((a, b) => a - b);
  const at = (p) => (s.length ? s[Math.ceil(p * s.length) - 1] : null);
  return { p50: at(0.5), p99: at(0.99), count: s.length };
}

function normalize(list) {
  return Array.from(new Set((list || []).map((s) => String(s).trim().toUpperCase()).filter(Boolean)));
}

// The browser's clock, in ms since 1970. Not Date.now(): the high-resolution clock does not jump while the page
// runs, and its readings agree with performance.now() (and requestAnimationFrame) to the microsecond.
function clockNow() {
  return performance.timeOrigin + performance.now();
}

export function subscribe(options = {}) {
  const base = String(options.url || "").replace(/\/+$/, "");
  const credentials = options.withCredentials ? "include" : "same-origin";
  const callbacks = { onQuote: options.onQuote, onState: options.onState, onDelay: options.onDelay };
  const measuring = options.measureDelays !== false;
  const hasEventSource = typeof EventSource === "function";

  let symbols = normalize(options.symbols);
  let transport = options.transport === "poll" || !hasEventSource ? "poll" : "stream";
  let fallback = options.transport !== "poll" && !hasEventSource ? "this browser has no EventSource" : null;
  let cursor = null; // digits of the last answer's cursor; null: the next answer is a snapshot
  const lastSeq = new Map(); // symbol -> digits of the seq last delivered for it
  let state = null;
  let stateKey = "";
  let closed = false;
  let cycle = null; // the running connection: {ctl, es, timers}; replaced on every restart
  let token = null; // the token in use; null: ask options.token (again)
  let authRetried = false; // a new token was tried since the last answer: another refusal is final
  let streamWorked = false; // a stream delivered here once: it gets through, whatever fails later
  let answers = 0;
  const life = new AbortController(); // aborted by close(): ends clock and report requests
  const clock = { offset: null, uncertainty: null, syncing: false, timer: 0 };
  const recent = { arrival: [], display: [] };
  const report = { wanted: measuring && options.reportDelays === true, allowed: false, pending: [], timer: 0 };
  report.last = -Infinity;
  report.sent = 0;
  report.accepted = 0;

  // A callback that throws must not stop the subscription.
  function call(name, ...args) {
    const fn = callbacks[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (err) {
      console.error(`comet.js: ${name} threw`, err);
    }
  }

  function setState(next, extra) {
    if (closed) return;
    const key = `${next} ${transport} ${fallback}`;
    if (key === stateKey && next !== "reconnecting") return;
    state = next;
    stateKey = key;
    call("onState", next, { transport, fallback, ...extra });
    // The first estimate failed (the server was away when the page started): try again now that it answers.
    if (next === "live" && measuring && clock.offset === null) syncClock();
  }

  const api = (path) => `${base}${path}`;
  const list = () => symbols.map(encodeURIComponent).join(",");
  const alive = (c) => cycle === c && !closed;

  /* ------------------------------------------------------------------ HTTP */

  // fetch with a deadline, stopped too when `signal` aborts. An event stream's body is not read (it never
  // ends): the answer's head is all a caller gets of it.
  async function request(url, init, timeoutMs, signal) {
    const ctl = new AbortController();
    const stop = () => ctl.abort();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, timeoutMs);
    if (signal.aborted) ctl.abort();
    signal.addEventListener("abort", stop);
    try {
      const res = await fetch(url, { ...init, credentials, signal: ctl.signal });
      const stream = (res.headers.get("Content-Type") || "").startsWith("text/event-stream");
      const text = stream ? "" : await res.text();
      return { res, text, stream };
    } catch (err) {
      throw new HttpError(0, timedOut ? `no answer within ${timeoutMs / 1000} s` : "connection failed");
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", stop);
      ctl.abort(); // done with it: this also cuts off an event stream after its head
    }
  }

  function errorOf(res, text) {
    let why = "";
    try {
      why = JSON.parse(text).error;
    } catch (_) {
      /* not JSON */
    }
    return new HttpError(res.status, typeof why === "string" && why ? why : `HTTP ${res.status}`);
  }

  // GET a {cursor, quotes} answer; polls and snapshots carry the token in the Authorization header.
  async function getAnswer(c, path, timeoutMs) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const { res, text } = await request(api(path), { headers }, timeoutMs, c.ctl.signal);
    if (!res.ok) throw errorOf(res, text);
    return parseAnswer(text);
  }

  async function getToken() {
    if (token === null) {
      const t = typeof options.token === "function" ? await options.token() : options.token;
      token = t === undefined || t === null ? "" : String(t);
    }
    return token;
  }

  // A 401/403. The first since the last answer gets a new token and an immediate retry (true); a second means
  // the token is not the problem a new one solves: stop and say so. A 403 retried in a loop is only refused again.
  function tokenRefused(err) {
    if (!authRetried) {
      authRetried = true;
      token = null;
      return true;
    }
    stopCycle();
    setState("unauthorized", { status: err.status, error: err.message });
    return false;
  }

  /* ------------------------------------------------------------------ the connection */

  function restart() {
    stopCycle();
    if (closed) return;
    if (symbols.length === 0) {
      setState("idle");
      return;
    }
    const c = { ctl: new AbortController(), es: null, timers: new Set() };
    cycle = c;
    setState(state === "live" ? "live" : "connecting");
    if (transport === "stream") runStream(c);
    else runPolls(c);
  }

  function stopCycle() {
    if (!cycle) return;
    cycle.ctl.abort();
    if (cycle.es) cycle.es.close();
    for (const t of cycle.timers) clearTimeout(t);
    cycle = null;
  }

  // Waits `ms`, or less: the browser coming back online is worth a try at once. Callers check alive() after.
  function pause(c, ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        c.timers.delete(t);
        removeEventListener("online", done);
        c.ctl.signal.removeEventListener("abort", done);
        resolve();
      };
      const t = setTimeout(done, ms);
      c.timers.add(t);
      addEventListener("online", done);
      c.ctl.signal.addEventListener("abort", done);
    });
  }

  function fallBack(why) {
    transport = "poll";
    fallback = why;
    restart(); // with the cursor: the long-poll goes on where the stream stopped
  }

  // GET /api/stream: the snapshot (or, with a cursor, what changed since), then one event per change.
  function runStream(c) {
    let failures = 0; // failed attempts since a stream last opened
    let resumed = cursor !== null; // the next event is the first after a reconnect
    let firstTimer = 0;

    const retry = async (error, status) => {
      const wait = backoffMs(failures);
      setState("reconnecting", { wait, error, status });
      await pause(c, wait);
      if (alive(c)) open();
    };

    // An EventSource does not say why it was refused: ask the same URL with fetch, whose answer has a status.
    const refused = async (url) => {
      let status = 0;
      let error = "the stream failed"; // e.g. a 200 now: it was a passing failure
      try {
        const { res, text, stream } = await request(url, { headers: { Accept: "text/event-stream" } }, REQUEST_TIMEOUT_MS, c.ctl.signal);
        if (res.ok && !stream) status = -1; // a 200 that is not a stream: something in the way rewrites it
        else if (!res.ok) ({ status, message: error } = errorOf(res, text));
      } catch (err) {
        error = err.message;
      }
      if (!alive(c)) return;
      if (status === 401 || status === 403) {
        if (tokenRefused(new HttpError(status, error))) open();
      } else if (status === 501) fallBack("the server cannot stream (501)");
      else if (status === -1) fallBack("the stream's answer is not an event stream");
      else retry(error, status); // down, overloaded (503), or a passing failure
    };

    const open = async () => {
      try {
        await getToken();
      } catch (err) {
        failures += 1;
        if (alive(c)) retry(`no token: ${err && err.message}`, 0);
        return;
      }
      if (!alive(c)) return;
      // A new EventSource cannot send Last-Event-ID: the cursor goes in the URL instead.
      const url = api(`/api/stream?symbols=${list()}${cursor === null ? "" : `&cursor=${cursor}`}${token ? `&access_token=${encodeURIComponent(token)}` : ""}`);
      const es = new EventSource(url, { withCredentials: credentials === "include" });
      c.es = es;
      const drop = () => {
        clearTimeout(firstTimer);
        c.timers.delete(firstTimer);
        es.close();
        if (c.es === es) c.es = null;
      };
      if (cursor === null) {
        firstTimer = setTimeout(() => {
          if (c.es !== es) return;
          drop();
          failures += 1;
          if (!streamWorked) fallBack(`no snapshot within ${FIRST_EVENT_MS / 1000} s: the stream is buffered or blocked`);
          else retry("no snapshot in time", 0);
        }, FIRST_EVENT_MS);
        c.timers.add(firstTimer);
      }
      es.onopen = () => {
        failures = 0;
        authRetried = false; // the server took the token
        if (cursor !== null) setState("live"); // else live with the snapshot, which comes at once
      };
      es.onmessage = (ev) => {
        if (c.es !== es) return;
        clearTimeout(firstTimer);
        let ans;
        try {
          ans = parseAnswer(ev.data);
        } catch (err) {
          console.error("comet.js: a stream event that is not an answer", err);
          return;
        }
        const sent = cursor;
        const mode = sent === null ? "snapshot" : resumed ? "catchup" : "live";
        resumed = false;
        streamWorked = true;
        setState("live");
        deliver(c, ans, mode, sent);
      };
      // The server ends a stream whose token expired with this event. The browser would reconnect with that
      // token and be refused: ask for a new one and go on from the cursor. It counts as the one retry, so an
      // unchanged token that is refused stops the subscription.
      es.addEventListener("expired", () => {
        if (c.es !== es) return;
        drop();
        token = null;
        authRetried = true;
        resumed = true;
        setState("reconnecting", { wait: 0, error: "the token expired" });
        open();
      });
      es.onerror = () => {
        if (c.es !== es) return;
        clearTimeout(firstTimer);
        failures += 1;
        resumed = true;
        if (es.readyState === EventSource.CLOSED) {
          drop(); // refused: an HTTP error, which the browser does not retry
          refused(url);
        } else if (failures <= NATIVE_RETRIES) {
          setState("reconnecting", { wait: STREAM_RETRY_MS, error: "connection lost" });
        } else {
          drop();
          retry("connection lost", 0);
        }
      };
    };
    open();
  }

  // GET /api/quotes for a snapshot, then /api/poll with the cursor of each answer. Changes made while an answer
  // travels, while the next poll is sent or while the connection is down are in the next answer.
  async function runPolls(c) {
    let failures = 0; // failures in a row; 0 again after any answer
    // 4xx answers in a row, 0 again only once a poll is answered: a refused poll is followed by a snapshot that
    // may well succeed, which must not reset the backoff of a poll refused every time.
    let refusals = 0;
    let resumed = cursor !== null;
    while (alive(c)) {
      try {
        await getToken();
        if (!alive(c)) return;
        const sent = cursor;
        const ans =
          sent === null
            ? await getAnswer(c, `/api/quotes?symbols=${list()}`, REQUEST_TIMEOUT_MS)
            : await getAnswer(c, `/api/poll?symbols=${list()}&cursor=${sent}`, POLL_WATCHDOG_MS);
        if (!alive(c)) return;
        if (sent !== null) refusals = 0;
        failures = 0;
        authRetried = false;
        setState("live");
        deliver(c, ans, sent === null ? "snapshot" : resumed ? "catchup" : "live", sent);
        resumed = false;
      } catch (err) {
        if (!alive(c)) return;
        resumed = true;
        const status = err instanceof HttpError ? err.status : 0;
        if (status === 401 || status === 403) {
          if (tokenRefused(err)) continue;
          return;
        }
        if (status === 400) cursor = null; // a refused cursor would be refused again: start from a snapshot
        const clientError = status >= 400 && status < 500 && status !== 408 && status !== 429;
        const wait = backoffMs(clientError ? refusals++ : failures++);
        setState("reconnecting", { wait, status, error: String(err && err.message) });
        await pause(c, wait);
      }
    }
  }

  /* ------------------------------------------------------------------ delivery */

  // mode: "snapshot", "live" or "catchup" for the whole answer; `sent` is the cursor the request carried.
  function deliver(c, ans, mode, sent) {
    const arrived = clockNow();
    answers += 1;
    // A cursor that went back: another server (or one that lost its data) answered a cursor ahead of it with a
    // full snapshot. What was delivered before says nothing about its seqs.
    if (sent !== null && cmpDigits(ans.cursor, sent) < 0) {
      lastSeq.clear();
      mode = "snapshot";
    }
    cursor = ans.cursor;
    const live = [];
    for (const q of ans.quotes) {
      if (!alive(c)) break; // a callback closed the subscription or changed its symbols
      if (!q || typeof q.symbol !== "string" || !Number.isSafeInteger(q.seq)) continue;
      const symbol = q.symbol.toUpperCase();
      if (!symbols.includes(symbol)) continue;
      const seq = String(q.seq);
      const last = lastSeq.get(symbol);
      if (last !== undefined && cmpDigits(seq, last) <= 0) continue; // delivered already
      // A snapshot's quote that is newer than the one delivered changed while nobody was looking (e.g. across
      // setSymbols): a catch-up. A quote at or below the cursor sent is no change since: part of a snapshot.
      let kind = mode;
      if (kind === "snapshot" && last !== undefined) kind = "catchup";
      else if (kind !== "snapshot" && sent !== null && cmpDigits(seq, sent) <= 0) kind = "snapshot";
      lastSeq.set(symbol, seq);
      call("onQuote", q, { kind, transport, cursor });
      if (kind === "live" && Number.isFinite(q.ts) && q.ts > 0) live.push(q);
    }
    if (live.length) measure(live, arrived);
  }

  /* ------------------------------------------------------------------ delays */

  // Only live quotes count: a snapshot or a catch-up measures how long the page was away, not the delivery.
  // Delays run from the quote's ts (the server's clock at the change) to the browser receiving it (arrival) and
  // to the first animation frame after onQuote ran for it (display: the frame that paints it). The browser's
  // clock is put on the server's with the estimated offset; what comes out below 0 is within the estimate's
  // uncertainty, and is 0.
  function measure(quotes, arrived) {
    const offset = clock.offset;
    // No estimate yet: no sample rather than a wrong one. A hidden page paints no frames: nothing is displayed.
    if (offset === null || typeof requestAnimationFrame !== "function") return;
    if (typeof document === "object" && document.hidden) return;
    const arrival = quotes.map((q) => Math.max(0, arrived + offset - q.ts / 1000));
    requestAnimationFrame(() => {
      if (closed) return;
      // The clock now, not the frame's timestamp: that is when the frame began, which can precede onQuote.
      const shown = clockNow();
      quotes.forEach((q, i) => {
        const display = Math.max(arrival[i], shown + offset - q.ts / 1000);
        keep(recent.arrival, arrival[i]);
        keep(recent.display, display);
        if (report.wanted && report.allowed && display <= REPORT_MAX_MS) queueReport(arrival[i], display);
        call("onDelay", q, { arrival: arrival[i], display });
      });
    });
  }

  function keep(values, v) {
    values.push(v);
    if (values.length > RECENT) values.shift();
  }

  // NTP's estimate from a few round trips to GET /api/time: the server read its clock somewhere between
  // sending and receiving, so offset = server - midpoint, wrong by at most half the round trip. The shortest
  // round trip gives the tightest bound; each estimate replaces the last (clocks drift).
  async function syncClock() {
    if (clock.syncing || closed) return;
    clock.syncing = true;
    let best = null;
    try {
      for (let i = 0; i < CLOCK_ROUND_TRIPS && !closed; i++) {
        const t0 = clockNow();
        const { res, text } = await request(api("/api/time"), {}, REQUEST_TIMEOUT_MS, life.signal);
        const t1 = clockNow();
        const body = JSON.parse(text);
        if (!res.ok || !Number.isFinite(body.now)) break;
        if (!best || t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: body.now / 1000 - (t0 + t1) / 2, reports: body.reports === true };
      }
    } catch (_) {
      /* the server is away: the next estimate is due anyway, and a new connection asks for one */
    } finally {
      clock.syncing = false;
    }
    if (!best || closed) return;
    clock.offset = best.offset;
    clock.uncertainty = best.rtt / 2;
    report.allowed = best.reports;
  }

  // Reports are batched: the first after REPORT_FIRST_MS, then at most one per REPORT_EVERY_MS, each with the
  // newest samples (the server takes at most 100). A refused (400) or throttled (429) report is dropped: a
  // sample is worth no retry. (Timers on performance.now(): the absolute clock is not needed for intervals.)
  function queueReport(arrival, display) {
    // Rounded to the µs alike, so display >= arrival still holds.
    const r = (v) => Math.round(v * 1000) / 1000;
    report.pending.push({ arrival: r(arrival), display: r(display) });
    if (report.pending.length > REPORT_MAX_SAMPLES) report.pending.shift();
    if (report.timer) return;
    const wait = Math.max(REPORT_FIRST_MS, report.last + REPORT_EVERY_MS - performance.now());
    report.timer = setTimeout(sendReport, wait);
  }

  async function sendReport() {
    report.timer = 0;
    const samples = report.pending.splice(0);
    if (closed || samples.length === 0) return;
    report.last = performance.now();
    report.sent += 1;
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const init = { method: "POST", headers, body: JSON.stringify({ samples }) };
      const { res } = await request(api("/api/display-delay"), init, REQUEST_TIMEOUT_MS, life.signal);
      if (res.ok) report.accepted += 1;
    } catch (_) {
      /* dropped */
    }
  }

  /* ------------------------------------------------------------------ start */

  // A page left for another is often kept, frozen, in the back/forward cache, and Chromium keeps its stream
  // open there: a server connection for a page nobody sees, for minutes. Let go of it, and come back from the
  // cursor (catching up) if the page is shown again.
  const onPageHide = (ev) => {
    if (ev.persisted) stopCycle();
  };
  const onPageShow = (ev) => {
    if (!ev.persisted || closed) return;
    setState("connecting");
    restart();
  };
  if (typeof addEventListener === "function") {
    addEventListener("pagehide", onPageHide);
    addEventListener("pageshow", onPageShow);
  }

  restart();
  if (measuring) {
    syncClock();
    clock.timer = setInterval(syncClock, CLOCK_EVERY_MS);
  }

  return {
    // Follow these symbols instead. Those kept are not delivered again unless they changed meanwhile.
    setSymbols(next) {
      const wanted = normalize(next);
      if (closed || wanted.slice().sort().join() === symbols.slice().sort().join()) return;
      symbols = wanted;
      for (const s of lastSeq.keys()) if (!symbols.includes(s)) lastSeq.delete(s);
      cursor = null; // the new symbols need a snapshot
      authRetried = false; // the token may grant these
      restart();
    },

    // Stop for good: no callback runs after this. Samples not yet reported are dropped.
    close() {
      if (closed) return;
      stopCycle();
      setState("closed");
      closed = true;
      clearInterval(clock.timer);
      clearTimeout(report.timer);
      life.abort();
      if (typeof removeEventListener === "function") {
        removeEventListener("pagehide", onPageHide);
        removeEventListener("pageshow", onPageShow);
      }
    },

    // What the subscription knows now. Delays in ms over the last RECENT live quotes; offsetMs is what to add to
    // this browser's clock to read the server's, uncertaintyMs how far off that may be (null: not measured yet).
    stats() {
      return {
        state,
        transport,
        fallback,
        cursor,
        answers,
        offsetMs: clock.offset,
        uncertaintyMs: clock.uncertainty,
        display: summary(recent.display),
        arrival: summary(recent.arrival),
        reports: { sent: report.sent, accepted: report.accepted },
      };
    },
  };
}
