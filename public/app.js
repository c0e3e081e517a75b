// comet-quotes page logic: keeps the watch list, follows it over one EventSource stream (or one long-poll), and
// renders quotes, status and counters.
(function () {
  "use strict";

  /* ------------------------------------------------------------------ settings */

  const BACKOFF_START_MS = 500;
  const BACKOFF_FACTOR = 2;
  const BACKOFF_CAP_MS = 10000;
  const FLASH_MS = 800; // how long flash-up / flash-down stays on a changed row
  const SPARK_POINTS = 40; // prices kept per symbol for its sparkline
  const MEDIAN_WINDOW = 100; // live updates the footer's median delay is taken over
  const DEFAULT_COUNT = 6; // symbols shown when neither the URL nor localStorage names any
  const STORAGE_KEY = "comet-quotes:symbols";
  const TOKEN_KEY = "comet-quotes:token"; // the reader's token (JWT), when the server wants one
  const REQUEST_TIMEOUT_MS = 15000; // snapshot and symbol list: answered at once by the server
  // A poll waits at most 60 s on the server (its cap). With no answer well after that the connection is
  // presumed dead (half-open TCP, a laptop waking from sleep) and is dropped and retried.
  const POLL_WATCHDOG_MS = 75000;
  // A stream that fails this many times in a row before any stream of this page delivered an event is taken
  // for a path that cannot stream (an old server, a proxy that refuses or buffers it): follow by long-poll.
  const STREAM_FAILURES_MAX = 3;
  // A stream opened without a cursor starts with a snapshot at once; none within this means it is buffered.
  const FIRST_EVENT_MS = 10000;
  // What the server's `retry:` line asks for; shown while the browser reconnects a dropped stream.
  const STREAM_RETRY_MS = 2000;
  const SPARK_W = 100; // sparkline viewBox; the SVG is stretched to its cell by CSS
  const SPARK_H = 24;
  const SVG_NS = "http://www.w3.org/2000/svg";

  /* ------------------------------------------------------------------ DOM */

  const byId = (id) => document.getElementById(id);
  const dom = {
    status: byId("status"),
    message: byId("message"),
    form: byId("add-form"),
    input: byId("add-symbol"),
    datalist: byId("symbol-list"),
    tbody: byId("quotes"),
    empty: byId("empty"),
    polls: byId("polls"),
    updates: byId("updates"),
    transport: byId("transport"),
    median: byId("median-delay"),
  };

  /* ------------------------------------------------------------------ state */

  let serverSymbols = []; // GET /api/symbols, in the server's order
  let known = new Set(); // the same, for look-ups
  let watch = []; // the watch list, in display order
  const rows = new Map(); // symbol -> row object (see createRow)
  let cycle = null; // AbortController of the running stream or snapshot+poll cycle
  // "stream" (EventSource) unless ?transport=poll or the browser has no EventSource; "poll" after a fallback.
  const wanted = new URLSearchParams(location.search).get("transport");
  let transport = wanted === "poll" || typeof EventSource !== "function" ? "poll" : "stream";
  let fellBack = false;
  let streamDelivered = false; // some stream of this page delivered an event: streaming works here

  // The reader's token: from ?access_token=, or from localStorage where an earlier load kept it.
  let token = initialToken();

  const conn = { state: "connecting", retryAt: 0, detail: "" };
  const stats = { polls: 0, updates: 0, delays: [] };

  // For automated tests and the console. The same object is updated in place, so a reference stays live.
  const debug = { cursor: null, polls: 0, updates: 0, state: conn.state, symbols: [], transport };
  window.cometDebug = debug;

  /* ------------------------------------------------------------------ HTTP */

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.name = "HttpError";
      this.status = status;
    }
  }

  // 401 and 403: the token is missing, expired or does not grant these symbols. Retrying cannot help until
  // the token changes (see the storage listener in init).
  function isRefused(err) {
    return err instanceof HttpError && (err.status === 401 || err.status === 403);
  }

  // Stops following and says why: "not authorized" is a state of its own, not a network failure.
  function refused(detail) {
    if (cycle) cycle.abort();
    cycle = null;
    setConn("unauthorized", detail);
    showMessage(`Not authorized: ${detail}. Open the page with ?access_token=<token> to follow these symbols.`, "error");
  }

  // The token from ?access_token= is kept in localStorage, as the watch list is, and taken out of the address
  // bar: a URL with a token in it would end up in the history, in bookmarks and in every link shared.
  function initialToken() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("access_token");
    if (fromUrl !== null) {
      params.delete("access_token");
      const rest = params.toString();
      try {
        history.replaceState(history.state, "", `${location.pathname}${rest ? `?${rest}` : ""}${location.hash}`);
      } catch (_) {
        /* e.g. a sandboxed frame */
      }
    }
    try {
      if (fromUrl) localStorage.setItem(TOKEN_KEY, fromUrl);
      return fromUrl || localStorage.getItem(TOKEN_KEY) || "";
    } catch (_) {
      return fromUrl || ""; // storage off: this page load still has it
    }
  }

  // 4xx means "this request is wrong": retrying it unchanged cannot help. 408 and 429 are the exceptions.
  function isClientError(err) {
    return err instanceof HttpError && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429;
  }

  // GET a JSON answer. `signal` aborts it from outside (watch list changed); `timeoutMs` gives up on a
  // silent connection. Paths are relative, so the page also works when mounted below a prefix.
  async function getJSON(path, signal, timeoutMs) {
    const ctl = new AbortController();
    const forward = () => ctl.abort();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctl.abort();
    }, timeoutMs);
    if (signal.aborted) ctl.abort();
    else signal.addEventListener("abort", forward, { once: true });
    try {
      let res;
      let text;
      try {
        // No `cache` option: the server already answers JSON with Cache-Control: no-store, and
        // cache: "no-store" makes Chromium add Pragma and Cache-Control headers to every poll,
        // which put a poll with one cookie at may_minihttp's 16-header limit (measured).
        const headers = { Accept: "application/json" };
        if (token) headers.Authorization = `Bearer ${token}`;
        res = await fetch(path, { signal: ctl.signal, headers });
        text = await res.text();
      } catch (err) {
        if (signal.aborted) throw err;
        throw new Error(timedOut ? `no answer within ${Math.round(timeoutMs / 1000)} s` : "connection failed");
      }
      let body = null;
      try {
        body = JSON.parse(text);
      } catch (_) {
        /* not JSON: reported below */
      }
      if (!res.ok) {
        const why = body && typeof body.error === "string" && body.error ? body.error : `HTTP ${res.status}`;
        throw new HttpError(res.status, why);
      }
      if (body === null || typeof body !== "object") throw new Error("the answer is not JSON");
      // The cursor is a u64. Today's values (microseconds since 1970) fit a double exactly, but keep its
      // digits as text anyway so that it goes back to the server exactly as it came.
      if ("cursor" in body) {
        const m = /"cursor"\s*:\s*(\d+)/.exec(text);
        body.cursor = m ? m[1] : null;
      }
      return body;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", forward);
    }
  }

  // A {cursor, quotes} answer of /api/quotes or /api/poll, checked.
  function checkAnswer(body) {
    if (typeof body.cursor !== "string") throw new Error("the answer has no cursor");
    if (!Array.isArray(body.quotes)) throw new Error("the answer has no quotes list");
    return body;
  }

  async function loadSymbols(signal) {
    const body = await getJSON("api/symbols", signal, REQUEST_TIMEOUT_MS);
    if (!body || !Array.isArray(body.symbols)) throw new Error("the answer has no symbols list");
    serverSymbols = uniq(body.symbols.filter((s) => typeof s === "string").map((s) => s.toUpperCase()));
    known = new Set(serverSymbols);
    renderDatalist();
    return known;
  }

  /* ------------------------------------------------------------------ retry */

  // Exponential backoff with "equal jitter": the ceiling grows 0.5, 1, 2, 4, 8, 10, 10 … s and each wait
  // is drawn at random from the upper half of it. The jitter matters when the server restarts: every open
  // page loses its poll at the same instant and, waiting identical times, all would come back in lockstep
  // and hit the fresh server together, again and again. Random waits spread them out.
  function backoffMs(failures) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * Math.pow(BACKOFF_FACTOR, failures));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  // Waits `ms` while the status counts down "reconnecting in N s". Resolves early when the browser comes
  // back online (no point sitting out the wait) or when `signal` aborts (the caller checks that).
  function waitToRetry(ms, signal) {
    return new Promise((resolve) => {
      const retryAt = Date.now() + ms;
      conn.retryAt = retryAt;
      setConn("reconnecting");
      const ticker = setInterval(renderStatus, 200);
      const finish = () => {
        clearTimeout(timer);
        clearInterval(ticker);
        window.removeEventListener("online", finish);
        signal.removeEventListener("abort", finish);
        if (conn.retryAt === retryAt) {
          conn.retryAt = 0; // now "reconnecting…" while the retry is under way
          renderStatus();
        }
        resolve();
      };
      const timer = setTimeout(finish, ms);
      window.addEventListener("online", finish);
      signal.addEventListener("abort", finish);
    });
  }

  /* ------------------------------------------------------------------ the cycle */

  // One stream (or one long-poll) carries the whole watch list rather than one per symbol: a browser keeps at
  // most ~6 HTTP/1.1 connections per server, so one per symbol would soon block every other request of the
  // page (and multiply the server's waiting connections).

  // Stops the running cycle and, if the watch list is not empty, starts a new one for it.
  function restartCycle() {
    if (cycle) cycle.abort();
    cycle = null;
    debug.cursor = null;
    renderTransport();
    if (watch.length === 0) {
      setConn("idle", "");
      return;
    }
    cycle = new AbortController();
    const signal = cycle.signal;
    const run = transport === "stream" ? runStream : runPolls;
    run(watch.slice(), signal).catch((err) => {
      // Not expected (the cycles handle their errors); leave a trace rather than fail silently.
      if (!signal.aborted) {
        console.error(`comet-quotes: ${transport} cycle stopped`, err);
        setConn("reconnecting", String(err && err.message));
      }
    });
  }

  /* ------------------------------------------------------------------ the stream */

  // GET /api/stream: the server sends the snapshot, then one event per change. The browser's EventSource
  // reconnects by itself after a dropped connection and sends Last-Event-ID, the cursor of the last event,
  // so the first event after a reconnect carries everything missed meanwhile. Resolves when `signal`
  // aborts, or after falling back to long-polls.
  function runStream(symbols, signal) {
    return new Promise((resolve) => {
      const list = symbols.map(encodeURIComponent).join(",");
      let es = null;
      let cursor = null; // the id of the last event; null before the snapshot
      let failures = 0; // consecutive failures; 0 again after any event
      let resume = false; // the next event is the first after a reconnect
      let firstTimer = 0;
      let retryTimer = 0;
      setConn(conn.state === "live" ? "live" : "connecting");

      const stop = () => {
        clearTimeout(firstTimer);
        clearTimeout(retryTimer);
        if (es) es.close();
        es = null;
      };
      signal.addEventListener("abort", () => (stop(), resolve()), { once: true });

      const fallBack = () => {
        stop();
        transport = "poll";
        fellBack = true;
        showMessage("Streaming does not get through to the server; following by long-poll instead.", "info");
        resolve();
        restartCycle();
      };

      // Counts a failure; true when it was one too many and the page now follows by long-poll.
      const failed = (detail) => {
        failures += 1;
        resume = true;
        conn.detail = detail;
        if (streamDelivered || failures < STREAM_FAILURES_MAX) return false;
        fallBack();
        return true;
      };

      // A refused stream (an HTTP error; an EventSource does not say which, so a snapshot asks the same
      // question): the token (stop, saying why), symbols the server no longer knows (drop them), or anything
      // else (retry with backoff, or fall back to long-poll after too many).
      const onRefused = async () => {
        const why = await whyRefused(list, signal);
        if (signal.aborted) return;
        if (why) {
          resolve();
          refused(why);
          return;
        }
        if (failed("the server refused the stream")) return;
        if ((await dropUnknownSymbols(symbols, signal)) || signal.aborted) return;
        const wait = backoffMs(failures - 1);
        conn.retryAt = Date.now() + wait;
        setConn("reconnecting");
        retryTimer = setTimeout(open, wait);
      };

      const open = () => {
        // A new EventSource cannot send Last-Event-ID: after a refusal the cursor goes in the URL instead.
        const auth = token ? `&access_token=${encodeURIComponent(token)}` : "";
        es = new EventSource(`api/stream?symbols=${list}${cursor === null ? "" : `&cursor=${cursor}`}${auth}`);
        // The server ends a stream whose token expired with this event; reconnecting with it would be refused.
        es.addEventListener("expired", () => {
          stop();
          resolve();
          refused("the token expired");
        });
        if (cursor === null) {
          firstTimer = setTimeout(() => {
            stop();
            if (!failed("no snapshot within 10 s: the stream is buffered or blocked")) open();
          }, FIRST_EVENT_MS);
        }
        es.onopen = () => setConn("live", "");
        es.onmessage = (ev) => {
          clearTimeout(firstTimer);
          let body;
          try {
            body = checkAnswer(streamBody(ev.data));
          } catch (err) {
            console.error("comet-quotes: bad stream event", err);
            return;
          }
          const sent = cursor;
          applyQuotes(body.quotes, sent === null ? "snapshot" : resume ? "resume" : "live", sent);
          cursor = body.cursor;
          resume = false;
          failures = 0;
          streamDelivered = true;
          stats.polls += 1;
          debug.cursor = Number(cursor);
          setConn("live", "");
          renderCounters();
        };
        es.onerror = () => {
          if (signal.aborted) return;
          if (es.readyState === EventSource.CLOSED) {
            // Refused (an HTTP error, not a stream): the browser will not retry this one.
            clearTimeout(firstTimer);
            es.close();
            onRefused();
            return;
          }
          // Dropped: the browser reconnects after the server's retry interval, with Last-Event-ID.
          if (failed("connection lost")) return;
          conn.retryAt = Date.now() + STREAM_RETRY_MS;
          setConn("reconnecting");
          const ticker = setInterval(() => {
            if (!es || es.readyState !== EventSource.CONNECTING || Date.now() > conn.retryAt) {
              clearInterval(ticker);
              conn.retryAt = 0;
              renderStatus();
            } else renderStatus();
          }, 200);
        };
      };
      open();
    });
  }

  // After a refused stream: the server's reason when the token is the problem (401/403), else null.
  async function whyRefused(list, signal) {
    try {
      await getJSON(`api/quotes?symbols=${list}`, signal, REQUEST_TIMEOUT_MS);
    } catch (err) {
      if (isRefused(err)) return err.message;
    }
    return null;
  }

  // An event's data: the same {cursor, quotes} a poll answers, cursor digits kept as text (see getJSON).
  function streamBody(text) {
    const body = JSON.parse(text);
    if (body && typeof body === "object" && "cursor" in body) {
      const m = /"cursor"\s*:\s*(\d+)/.exec(text);
      body.cursor = m ? m[1] : null;
    }
    return body;
  }

  /* ------------------------------------------------------------------ the long-poll */

  async function runPolls(symbols, signal) {
    const list = symbols.map(encodeURIComponent).join(",");
    // The cursor names the last change this page has seen. Each poll sends it and the server answers with
    // every change after it, so changes made while an answer travels back, while the next poll is being
    // sent, or while we are disconnected are delivered by the next poll instead of being lost.
    let cursor = null; // null: no snapshot yet in this cycle
    let failures = 0; // consecutive failures; 0 again after any answer
    // Consecutive 4xx answers, 0 again only once a poll is answered: after a refused poll the snapshot that
    // restarts the cycle may well succeed, and must not reset the backoff of a poll refused every time.
    let refusals = 0;
    setConn(conn.state === "live" ? "live" : "connecting");

    for (;;) {
      try {
        if (cursor === null) {
          // Snapshot first: fills the table at once and yields the cursor the first poll starts from.
          const snap = checkAnswer(await getJSON(`api/quotes?symbols=${list}`, signal, REQUEST_TIMEOUT_MS));
          if (signal.aborted) return;
          applyQuotes(snap.quotes, "snapshot", null);
          cursor = snap.cursor;
        } else {
          const sent = cursor;
          const ans = checkAnswer(await getJSON(`api/poll?symbols=${list}&cursor=${sent}`, signal, POLL_WATCHDOG_MS));
          if (signal.aborted) return;
          stats.polls += 1;
          refusals = 0;
          // The first answer after a failure carries what changed while we were away: its delay measures
          // the outage, not the delivery, so it is shown but kept out of the delay figures ("resume").
          applyQuotes(ans.quotes, failures > 0 ? "resume" : "live", sent);
          cursor = ans.cursor;
        }
        failures = 0; // success: the next failure starts the backoff from 0.5 s again
        debug.cursor = Number(cursor);
        setConn("live", "");
        renderCounters();
      } catch (err) {
        if (signal.aborted) return;
        if (isRefused(err)) {
          refused(err.message); // not retried: the same token would be refused again
          return;
        }
        if (isClientError(err)) {
          showMessage(`The server refused the request (${err.status}): ${err.message}`, "error");
          // Most likely the server restarted with other symbols: re-read its list and drop what is gone.
          if (await dropUnknownSymbols(symbols, signal)) return; // the watch list changed: a new cycle runs
          if (signal.aborted) return;
          // A refused cursor (400) would be refused again: start over from a snapshot.
          if (err.status === 400) cursor = null;
          // Otherwise retry, but with the growing backoff below: never in a hot loop.
        }
        conn.detail = String(err && err.message ? err.message : err);
        // Keep the cursor: the retry is a poll with it, and the server answers at once with what was
        // missed (or with a snapshot when the cursor is ahead of it, e.g. after a restart).
        const attempt = isClientError(err) ? refusals++ : failures++;
        await waitToRetry(backoffMs(attempt), signal);
        if (signal.aborted) return;
      }
    }
  }

  // After a 4xx: refresh the symbol list; when watched symbols are gone, drop them (starting a new cycle).
  async function dropUnknownSymbols(symbols, signal) {
    try {
      await loadSymbols(signal);
    } catch (_) {
      return false;
    }
    if (signal.aborted) return false;
    const gone = symbols.filter((s) => !known.has(s));
    if (gone.length === 0) return false;
    showMessage(`Removed symbols the server does not know: ${gone.join(", ")}`, "error");
    setWatch(watch.filter((s) => known.has(s)));
    return true;
  }

  /* ------------------------------------------------------------------ quotes -> table */

  // mode: "snapshot" (GET /api/quotes), "live" (a poll answer) or "resume" (first poll after a failure).
  function applyQuotes(quotes, mode, sentCursor) {
    const nowUs = Date.now() * 1000; // taken once, as the answer arrived
    const sent = sentCursor === null ? null : Number(sentCursor);
    for (const q of quotes) {
      if (!q || typeof q.symbol !== "string") continue;
      const row = rows.get(q.symbol.toUpperCase());
      if (!row) continue; // no longer on the watch list
      let kind = mode;
      // A poll whose cursor is ahead of the server (it restarted) is answered with a snapshot: quotes at or
      // below the cursor sent. Those are not changes delivered live.
      if (kind !== "snapshot" && !(Number(q.seq) > sent)) kind = "snapshot";
      if (kind !== "snapshot") stats.updates += 1;
      updateRow(row, q, kind, nowUs);
    }
  }

  function updateRow(row, q, kind, nowUs) {
    const price = Number(q.price);
    if (!Number.isFinite(price)) return;
    const seq = String(q.seq);
    // A snapshot of a quote this row already shows changes nothing: keep the row (and its live delay).
    if (kind === "snapshot" && seq === row.seq) return;
    const isNew = seq !== row.seq;
    const prev = row.price;
    row.price = price;
    row.seq = seq;
    const { tr, cells } = row;

    cells.price.textContent = price.toFixed(2);

    // Change since open: the server sends it with 2 decimals. Rounding here also turns -0 into +0.00.
    const rawChange = Number(q.change);
    const change = Number.isFinite(rawChange) ? Math.round(rawChange * 100) / 100 : 0;
    const dir = change > 0 ? "up" : change < 0 ? "down" : "flat";
    const sign = change < 0 ? "-" : "+";
    cells.change.textContent = sign + Math.abs(change).toFixed(2);
    const open = price - change;
    cells.pct.textContent = open > 0 ? `${sign}${Math.abs((change / open) * 100).toFixed(2)}%` : "—";
    for (const el of [tr, cells.change, cells.pct]) {
      el.classList.toggle("up", dir === "up");
      el.classList.toggle("down", dir === "down");
    }

    const ts = Number(q.ts); // microseconds since 1970, server clock
    const hasTs = Number.isFinite(ts) && ts > 0;
    cells.time.textContent = hasTs ? formatTime(ts) : "—";
    cells.time.title = hasTs ? new Date(ts / 1000).toISOString() : "";

    if (kind === "live" && hasTs) {
      // Delivery delay: browser clock now minus server clock at the change. Only meaningful when both
      // clocks agree (same machine or NTP); it can read negative when they do not.
      const delayMs = (nowUs - ts) / 1000;
      cells.delay.textContent = delayMs.toFixed(1);
      cells.delay.title = "delivery delay (ms): server change to this page";
      stats.delays.push(delayMs);
      if (stats.delays.length > MEDIAN_WINDOW) stats.delays.shift();
    } else {
      cells.delay.textContent = "—";
      cells.delay.title =
        kind === "resume" ? "caught up after a reconnect: not a live delivery" : "snapshot: not a live delivery";
    }
    tr.dataset.source = kind;
    tr.dataset.seq = seq;

    if (isNew) {
      row.prices.push(price);
      if (row.prices.length > SPARK_POINTS) row.prices.shift();
      drawSpark(row);
    }
    if (prev !== undefined && price !== prev) flash(row, price > prev ? "up" : "down");
  }

  // Marks a row that just moved. The class stays FLASH_MS (it drives a CSS fade); a new move restarts it.
  function flash(row, dir) {
    const tr = row.tr;
    clearTimeout(row.flashTimer);
    tr.classList.remove("flash-up", "flash-down");
    void tr.offsetWidth; // reflow, so that re-adding the class restarts the animation
    tr.classList.add(`flash-${dir}`);
    row.flashTimer = setTimeout(() => tr.classList.remove("flash-up", "flash-down"), FLASH_MS);
  }

  // Sparkline: the row's recent prices spread over the whole width (a few prices are not squeezed into the
  // right edge), newest at the right, scaled to the row's own min..max.
  function drawSpark(row) {
    const p = row.prices;
    const n = p.length;
    const step = n > 1 ? SPARK_W / (n - 1) : SPARK_W;
    const lo = Math.min(...p);
    const hi = Math.max(...p);
    const pad = 2;
    const y = (v) => (hi === lo ? SPARK_H / 2 : pad + ((hi - v) / (hi - lo)) * (SPARK_H - 2 * pad));
    const pts = p.map((v, i) => [SPARK_W - (n - 1 - i) * step, y(v)]);
    if (n === 1) pts.unshift([0, pts[0][1]]); // a lone price: a flat stroke across
    row.line.setAttribute("points", pts.map(([x, yy]) => `${x.toFixed(2)},${yy.toFixed(2)}`).join(" "));
  }

  function formatTime(tsUs) {
    const d = new Date(Math.floor(tsUs / 1000));
    const two = (n) => String(n).padStart(2, "0");
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
  }

  /* ------------------------------------------------------------------ rows */

  const CELLS = ["sym", "price", "change", "pct", "time", "delay", "spark"];

  function createRow(symbol) {
    const tr = document.createElement("tr");
    tr.dataset.symbol = symbol;
    tr.dataset.source = "pending"; // no quote yet
    const cells = {};
    for (const name of CELLS) {
      const td = document.createElement("td");
      td.className = name;
      td.textContent = name === "sym" ? symbol : name === "spark" ? "" : "—";
      tr.appendChild(td);
      cells[name] = td;
    }

    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${SPARK_W} ${SPARK_H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const line = document.createElementNS(SVG_NS, "polyline");
    line.setAttribute("points", "");
    line.setAttribute("vector-effect", "non-scaling-stroke"); // keep the stroke thin although stretched
    svg.appendChild(line);
    cells.spark.appendChild(svg);

    const actions = document.createElement("td");
    actions.className = "actions";
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "remove";
    btn.textContent = "×";
    btn.title = `Remove ${symbol}`;
    btn.setAttribute("aria-label", `Remove ${symbol}`);
    actions.appendChild(btn);
    tr.appendChild(actions);

    return { symbol, tr, cells, line, price: undefined, seq: undefined, prices: [], flashTimer: 0 };
  }

  // Brings tbody#quotes in line with the watch list, reusing rows (and their history) that stay.
  function renderRows() {
    for (const [symbol, row] of rows) {
      if (!watch.includes(symbol)) {
        clearTimeout(row.flashTimer);
        row.tr.remove();
        rows.delete(symbol);
      }
    }
    let ref = dom.tbody.firstElementChild;
    for (const symbol of watch) {
      let row = rows.get(symbol);
      if (!row) {
        row = createRow(symbol);
        rows.set(symbol, row);
      }
      if (row.tr === ref) ref = ref.nextElementSibling;
      else dom.tbody.insertBefore(row.tr, ref);
    }
    dom.empty.hidden = watch.length > 0;
  }

  // Type-ahead: every symbol the server knows that is not watched yet.
  function renderDatalist() {
    const watched = new Set(watch);
    const frag = document.createDocumentFragment();
    for (const s of serverSymbols) {
      if (watched.has(s)) continue;
      const opt = document.createElement("option");
      opt.value = s;
      frag.appendChild(opt);
    }
    dom.datalist.replaceChildren(frag);
  }

  /* ------------------------------------------------------------------ watch list */

  function parseList(text) {
    return uniq(
      String(text || "")
        .split(/[\s,]+/)
        .map((s) => s.trim().toUpperCase())
        .filter(Boolean)
    );
  }

  function uniq(list) {
    return Array.from(new Set(list));
  }

  function setWatch(list) {
    watch = uniq(list);
    debug.symbols = watch.slice();
    saveWatch();
    renderRows();
    renderDatalist();
    restartCycle();
  }

  // The watch list lives in the URL (a link shares the view) and in localStorage (a plain reload keeps it).
  function saveWatch() {
    try {
      localStorage.setItem(STORAGE_KEY, watch.join(","));
    } catch (_) {
      /* storage off (private mode, quota): the URL still has it */
    }
    const params = new URLSearchParams(location.search);
    params.delete("symbols");
    const rest = params.toString();
    // Built by hand: URLSearchParams would write the commas as %2C, and ?symbols=IBM,MSFT reads better.
    const ours = `symbols=${watch.map(encodeURIComponent).join(",")}`;
    try {
      history.replaceState(history.state, "", `${location.pathname}?${rest ? `${rest}&` : ""}${ours}${location.hash}`);
    } catch (_) {
      /* e.g. a sandboxed frame: nothing to do */
    }
  }

  // URL wins over localStorage; when neither names a known symbol, the first DEFAULT_COUNT symbols.
  function initialWatch() {
    const unknown = [];
    const split = (list) => list.filter((s) => known.has(s) || (unknown.push(s), false));
    let list = split(parseList(new URLSearchParams(location.search).get("symbols")));
    if (list.length === 0) {
      let stored = "";
      try {
        stored = localStorage.getItem(STORAGE_KEY) || "";
      } catch (_) {
        /* storage off */
      }
      list = split(parseList(stored));
    }
    if (list.length === 0) list = serverSymbols.slice(0, DEFAULT_COUNT);
    if (unknown.length) showMessage(`Ignored unknown symbol${unknown.length > 1 ? "s" : ""}: ${uniq(unknown).join(", ")}`, "error");
    return list;
  }

  async function onAdd(ev) {
    ev.preventDefault();
    const wanted = parseList(dom.input.value);
    if (wanted.length === 0) {
      showMessage("Type a symbol to add, e.g. IBM.", "error");
      return;
    }
    let unknown = wanted.filter((s) => !known.has(s));
    if (unknown.length) {
      // The server creates symbols on publish, so the list may have grown since it was loaded.
      try {
        await loadSymbols(new AbortController().signal);
      } catch (_) {
        if (known.size === 0) {
          showMessage("The symbol list has not loaded yet; try again when the server answers.", "error");
          return;
        }
      }
      unknown = wanted.filter((s) => !known.has(s));
    }
    const already = wanted.filter((s) => known.has(s) && watch.includes(s));
    const fresh = wanted.filter((s) => known.has(s) && !watch.includes(s));
    if (fresh.length) setWatch(watch.concat(fresh));

    if (unknown.length) {
      showMessage(`Unknown symbol${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`, "error");
      dom.input.value = unknown.join(", "); // leave the rejects for correction
      dom.input.select();
    } else {
      dom.input.value = "";
      if (already.length) showMessage(`Already on the watch list: ${already.join(", ")}`, "info");
      else showMessage(`Added ${fresh.join(", ")}`, "info");
    }
  }

  function onRemoveClick(ev) {
    const btn = ev.target instanceof Element ? ev.target.closest("button.remove") : null;
    if (!btn) return;
    const tr = btn.closest("tr");
    const symbol = tr && tr.dataset.symbol;
    if (!symbol) return;
    const hadFocus = document.activeElement === btn;
    const next = tr.nextElementSibling || tr.previousElementSibling;
    setWatch(watch.filter((s) => s !== symbol));
    // Keyboard users: keep focus near where it was instead of dropping it to <body>.
    if (hadFocus) (next ? next.querySelector("button.remove") : dom.input).focus();
  }

  /* ------------------------------------------------------------------ status, message, counters */

  function setConn(state, detail) {
    conn.state = state;
    if (detail !== undefined) conn.detail = detail;
    renderStatus();
  }

  // States: connecting, live, reconnecting, idle (empty watch list), unauthorized (401/403: stays until the
  // token changes); offline overrides all of them whenever navigator.onLine is false.
  function renderStatus() {
    let state = conn.state;
    let text;
    if (!navigator.onLine) {
      state = "offline";
      text = "offline";
    } else if (state === "live") {
      text = "live";
    } else if (state === "reconnecting") {
      text = conn.retryAt ? `reconnecting in ${Math.max(1, Math.ceil((conn.retryAt - Date.now()) / 1000))} s` : "reconnecting…";
    } else if (state === "idle") {
      text = "idle: watch list empty";
    } else if (state === "unauthorized") {
      text = "not authorized";
    } else {
      text = "connecting…";
    }
    if (dom.status.dataset.state !== state) dom.status.dataset.state = state;
    if (dom.status.textContent !== text) dom.status.textContent = text;
    const title = conn.detail ? `last error: ${conn.detail}` : "";
    if (dom.status.title !== title) dom.status.title = title;
    debug.state = state;
  }

  let messageTimer = 0;
  // kind "error" stays until the next message; "info" clears itself.
  function showMessage(text, kind) {
    clearTimeout(messageTimer);
    dom.message.textContent = text;
    dom.message.dataset.kind = kind || "";
    dom.message.hidden = !text;
    if (text && kind === "info") messageTimer = setTimeout(() => showMessage("", ""), 5000);
  }

  function renderTransport() {
    const text = transport === "stream" ? "stream (EventSource)" : fellBack ? "long-poll (fallback)" : "long-poll";
    if (dom.transport.textContent !== text) dom.transport.textContent = text;
    debug.transport = transport;
  }

  function renderCounters() {
    dom.polls.textContent = String(stats.polls);
    dom.updates.textContent = String(stats.updates);
    dom.median.textContent = stats.delays.length ? median(stats.delays).toFixed(1) : "—";
    debug.polls = stats.polls;
    debug.updates = stats.updates;
  }

  function median(values) {
    const s = values.slice().sort((a, b) => a - b);
    const mid = s.length >> 1;
    return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  }

  /* ------------------------------------------------------------------ start */

  async function init() {
    dom.form.addEventListener("submit", onAdd);
    dom.tbody.addEventListener("click", onRemoveClick);
    window.addEventListener("online", renderStatus);
    window.addEventListener("offline", renderStatus);
    // A token saved by another tab (or the console): follow again with it.
    window.addEventListener("storage", (ev) => {
      if (ev.key !== TOKEN_KEY) return;
      token = ev.newValue || "";
      showMessage("", "");
      restartCycle();
    });
    renderStatus();
    renderCounters();

    // The symbol list is needed to validate the URL / stored list, so wait for it (retrying as for polls).
    const never = new AbortController().signal;
    for (let failures = 0; ; failures += 1) {
      try {
        await loadSymbols(never);
        break;
      } catch (err) {
        conn.detail = String(err && err.message ? err.message : err);
        if (isClientError(err)) showMessage(`Cannot load the symbol list (${err.status}): ${err.message}`, "error");
        await waitToRetry(backoffMs(failures), never);
      }
    }
    if (dom.message.dataset.kind === "error") showMessage("", "");
    setWatch(initialWatch());
  }

  init();
})();
