-- wrk script: publishing, POST /api/quotes {"symbol","price"} with a random symbol and price
-- (TARGET=nchan: POST /pub/SYMBOL with the quote JSON, for the same test against Nchan).
-- Unpaced by default (as fast as the connections go); PUB_DELAY_MS=N makes each connection wait N ms
-- between publishes, e.g. -t1 -c1 with PUB_DELAY_MS=5 is ~200 changes/s to drive poll.lua.
-- Usage: wrk -t2 -c8 -d10s -s bench/wrk/pub.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), TARGET (ours|nchan), PUB_DELAY_MS (0).
local n = tonumber(os.getenv("SYMBOLS_N") or "50")
local prefix = os.getenv("SYMBOL_PREFIX") or "S"
local target = os.getenv("TARGET") or "ours"
local delay_ms = tonumber(os.getenv("PUB_DELAY_MS") or "0")

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  math.randomseed(3000 + (id or 0))
end

if delay_ms > 0 then
  function delay() return delay_ms end
end

local headers = { ["Content-Type"] = "application/json" }
function request()
  local sym = prefix .. math.random(0, n - 1)
  local price = string.format("%d.%02d", math.random(100, 199), math.random(0, 99))
  if target == "nchan" then
    local body = string.format('{"symbol":"%s","price":%s}', sym, price)
    return wrk.format("POST", "/pub/" .. sym, headers, body)
  end
  local body = string.format('{"symbol":"%s","price":%s}', sym, price)
  return wrk.format("POST", "/api/quotes", headers, body)
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"script":"pub","target":"%s","requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    target, summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
