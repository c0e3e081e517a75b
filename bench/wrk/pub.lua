-- wrk script: publishing, POST /api/quotes {"symbol","price"} with a random symbol and price
-- (TARGET=nchan: POST /pub/SYMBOL with the quote JSON, for the same test against Nchan).
-- Unpaced by default (as fast as the connections go); PUB_DELAY_MS=N makes each connection wait N ms
-- between publishes, e.g. -t1 -c1 with PUB_DELAY_MS=5 is ~200 changes/s to drive poll.lua.
-- Usage: wrk -t2 -c8 -d10s -s bench/wrk/pub.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), TARGET (ours|nchan), PUB_DELAY_MS (0),
-- COMET_PUBLISH_TOKEN (the server's --publish-token; sent as Authorization: Bearer).
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local target = os.getenv("TARGET") or "ours"
local delay_ms = tonumber(os.getenv("PUB_DELAY_MS") or "0")
setup = common.setup

function init(args)
  math.randomseed(3000 + (id or 0))
end

if delay_ms > 0 then
  function delay() return delay_ms end
end

local headers = { ["Content-Type"] = "application/json" }
local token = os.getenv("COMET_PUBLISH_TOKEN")
if token and token ~= "" and target ~= "nchan" then
  headers["Authorization"] = "Bearer " .. token
end
function request()
  local sym = common.prefix .. math.random(0, common.n - 1)
  local price = string.format("%d.%02d", math.random(100, 199), math.random(0, 99))
  local body = string.format('{"symbol":"%s","price":%s}', sym, price)
  -- The same quote JSON: Nchan publishes it to the symbol's channel, ours to its book.
  local path = target == "nchan" and ("/pub/" .. sym) or "/api/quotes"
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests_stats)
  common.report("pub", string.format('"target":"%s",', target), summary, latency)
end
