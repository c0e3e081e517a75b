// comet-quotes page logic: keeps the watch list, follows it through comet.js (one stream, or one long-poll), and
// renders quotes, status, delays and counters. How quotes arrive is comet.js's business alone.
import { subscribe } from "./comet.js";

/* ------------------------------------------------------------------ settings */

const FLASH_MS = 800; // how long flash-up / flash-down stays on a changed row
const SPARK_POINTS = 40; // prices kept per symbol for its sparkline
const DEFAULT_COUNT = 6; // symbols shown when neither the URL nor localStorage names any
const STORAGE_KEY = "comet-quotes:symbols";
const TOKEN_KEY = "comet-quotes:token"; // the reader's token (JWT), when the server wants one
const REQUEST_TIMEOUT_MS = 15000; // the symbol list: answered at once by the server
const FOOTER_EVERY_MS = 1000; // the footer's figures are redrawn this often (and on every delay measured)
const SPARK_W = 100; // sparkline viewBox; the SVG is stretched to its cell by CSS
const SPARK_H = 24;
const SVG_NS = "http://www.w3.org/2000/svg";
// The quotes server is the one that served this page, below the same path: the page also works when mounted
// below a prefix.
const SERVER = new URL(".", location.href).href;

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
  p50: byId("delay-p50"),
  p99: byId("delay-p99"),
  clock: byId("clock-uncertainty"),
};

/* ------------------------------------------------------------------ state */

let serverSymbols = []; // GET /api/symbols, in the server's order
let known = new Set(); // the same, for look-ups
let watch = []; // the watch list, in display order
const rows = new Map(); // symbol -> row object (see createRow)
let sub = null; // the comet.js subscription following the watch list
// ?transport=poll follows by long-poll only (comet.js streams otherwise, and falls back by itself).
const onlyPoll = new URLSearchParams(location.search).get("transport") === "poll";
let fellBackShown = false;
let updates = 0; // quotes received that were not part of a snapshot

// The reader's token: from ?access_token=, or from localStorage where an earlier load kept it.
let token = initialToken();

const conn = { state: "connecting", retryAt: 0, detail: "" };

// For automated tests and the console. The same object is updated in place, so a reference stays live.
const debug = {
  cursor: null,
  polls: 0,
  updates: 0,
  state: conn.state,
  symbols: [],
  transport: onlyPoll ? "poll" : "stream",
  stats: () => (sub ? sub.stats() : null),
};
window.cometDebug = debug;

/* ------------------------------------------------------------------ token and symbol list */

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

async function loadSymbols() {
  const res = await fetch("api/symbols", { headers: { Accept: "application/json" }, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(body && typeof body.error === "string" ? body.error : `HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  if (!body || !Array.isArray(body.symbols)) throw new Error("the answer has no symbols list");
  serverSymbols = uniq(body.symbols.filter((s) => typeof s === "string").map((s) => s.toUpperCase()));
  known = new Set(serverSymbols);
  renderDatalist();
  return known;
}

/* ------------------------------------------------------------------ following the watch list */

// One subscription carries the whole watch list rather than one per symbol: a browser keeps at most ~6 HTTP/1.1
// connections per server, so one per symbol would soon block every other request of the page.
function follow() {
  if (watch.length === 0) {
    if (sub) sub.close();
    sub = null;
    setConn("idle", "");
    return;
  }
  if (sub) {
    sub.setSymbols(watch);
    return;
  }
  sub = subscribe({
    url: SERVER,
    symbols: watch,
    token: () => token, // read at each ask: a token saved meanwhile is used
    transport: onlyPoll ? "poll" : "auto",
    reportDelays: true, // the server's display-delay histogram is fed by pages like this one
    onQuote,
    onDelay,
    onState,
  });
}

function onState(state, d) {
  renderTransport(d);
  if (d.fallback && !fellBackShown) {
    fellBackShown = true;
    showMessage("Streaming does not get through to the server; following by long-poll instead.", "info");
  }
  if (state === "live") {
    conn.retryAt = 0;
    setConn("live", "");
  } else if (state === "reconnecting") {
    conn.retryAt = d.wait ? Date.now() + d.wait : 0;
    setConn("reconnecting", d.error || "");
    if (d.status >= 400 && d.status < 500) {
      // Most likely the server restarted with other symbols: re-read its list and drop what is gone.
      showMessage(`The server refused the request (${d.status}): ${d.error}`, "error");
      dropUnknownSymbols();
    }
  } else if (state === "unauthorized") {
    setConn("unauthorized", d.error);
    showMessage(`Not authorized: ${d.error}. Open the page with ?access_token=<token> to follow these symbols.`, "error");
  } else if (state === "connecting") {
    setConn("connecting");
  }
  renderCounters();
}

// After a 4xx: refresh the symbol list; when watched symbols are gone, drop them.
let dropping = false;
async function dropUnknownSymbols() {
  if (dropping) return;
  dropping = true;
  try {
    await loadSymbols();
    const gone = watch.filter((s) => !known.has(s));
    if (gone.length) {
      showMessage(`Removed symbols the server does not know: ${gone.join(", ")}`, "error");
      setWatch(watch.filter((s) => known.has(s)));
    }
  } catch (_) {
    /* the list did not load: the next refusal asks again */
  } finally {
    dropping = false;
  }
}

/* ------------------------------------------------------------------ quotes -> table */

function onQuote(q, info) {
  debug.cursor = Number(info.cursor);
  const row = rows.get(q.symbol.toUpperCase());
  if (!row) return; // no longer on the watch list
  if (info.kind !== "snapshot") updates += 1;
  updateRow(row, q, info.kind);
}

// comet.js measured a live quote's delays once the frame showing it was painted. Display: server change to
// painted on this page, with the browser's clock put on the server's (never negative).
function onDelay(q, d) {
  const row = rows.get(q.symbol.toUpperCase());
  if (row && row.seq === String(q.seq)) {
    row.cells.delay.textContent = d.display.toFixed(1);
    row.cells.delay.title = `display delay ${d.display.toFixed(1)} ms: server change to painted here (arrived after ${d.arrival.toFixed(1)} ms)`;
  }
  renderCounters();
}

// kind: "snapshot" (the value when following began), "live" (a change as it happened), "catchup" (a change
// made while the connection was down).
function updateRow(row, q, kind) {
  const price = Number(q.price);
  if (!Number.isFinite(price)) return;
  const seq = String(q.seq);
  // A snapshot of a quote this row already shows changes nothing: keep the row (and its delay).
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

  // The delay of a live quote is known once its frame is painted (onDelay); the others have none.
  cells.delay.textContent = "—";
  cells.delay.title =
    kind === "live"
      ? "display delay: measured once painted"
      : kind === "catchup"
        ? "caught up after a reconnect: not a live delivery"
        : "snapshot: not a live delivery";
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
  follow();
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
      await loadSymbols();
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
  tickStatus();
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

// While reconnecting, the countdown ("reconnecting in N s") is redrawn every 200 ms.
let statusTicker = 0;
function tickStatus() {
  const counting = conn.state === "reconnecting" && conn.retryAt > 0;
  if (counting && !statusTicker) {
    statusTicker = setInterval(() => {
      if (conn.retryAt && Date.now() > conn.retryAt) conn.retryAt = 0; // now "reconnecting…": the retry is under way
      renderStatus();
      tickStatus();
    }, 200);
  } else if (!counting && statusTicker) {
    clearInterval(statusTicker);
    statusTicker = 0;
  }
}

function renderTransport(d) {
  const text = d.transport === "stream" ? "stream (EventSource)" : d.fallback ? "long-poll (fallback)" : "long-poll";
  if (dom.transport.textContent !== text) dom.transport.textContent = text;
  debug.transport = d.transport;
}

// The footer: this page's own display delays (p50 and p99 of its last live quotes) and how far its estimate of
// the server's clock may be off. comet.js never hands out a negative delay.
function renderCounters() {
  const st = sub ? sub.stats() : null;
  const ms = (v) => (v === null || v === undefined ? "—" : v.toFixed(1));
  const answers = st ? st.answers : 0;
  dom.polls.textContent = String(answers);
  dom.updates.textContent = String(updates);
  dom.p50.textContent = st ? ms(st.display.p50) : "—";
  dom.p99.textContent = st ? ms(st.display.p99) : "—";
  dom.clock.textContent = st ? ms(st.uncertaintyMs) : "—";
  debug.polls = answers;
  debug.updates = updates;
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
    if (sub) sub.close();
    sub = null;
    follow();
  });
  setInterval(renderCounters, FOOTER_EVERY_MS);
  renderStatus();
  renderCounters();

  // The symbol list is needed to validate the URL / stored list, so wait for it, retrying with backoff.
  for (let failures = 0; ; failures += 1) {
    try {
      await loadSymbols();
      break;
    } catch (err) {
      if (err.status >= 400 && err.status < 500) showMessage(`Cannot load the symbol list (${err.status}): ${err.message}`, "error");
      const wait = Math.min(10000, 500 * 2 ** failures) * (0.5 + Math.random() / 2);
      conn.retryAt = Date.now() + wait;
      setConn("reconnecting", String(err.message));
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  if (dom.message.dataset.kind === "error") showMessage("", "");
  setWatch(initialWatch());
}

init();
