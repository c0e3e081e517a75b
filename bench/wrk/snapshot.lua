-- wrk script: snapshot endpoint of comet-quotes, GET /api/quotes?symbols=... with random K-of-S sets.
-- Usage: wrk -t2 -c100 -d10s -s bench/wrk/snapshot.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), K (5).
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
setup = common.setup

-- Building a request per call is costly in Lua, so pre-build a few hundred and cycle through them.
local requests = {}
local next_req = 1
function init(args)
  math.randomseed(1000 + (id or 0))
  for i = 1, 256 do
    requests[i] = wrk.format("GET", "/api/quotes?symbols=" .. common.symbol_set())
  end
end

function request()
  local r = requests[next_req]
  next_req = next_req % #requests + 1
  return r
end

function done(summary, latency, requests_stats)
  common.report("snapshot", "", summary, latency)
end
