-- wrk script: snapshot endpoint of comet-quotes, GET /api/quotes?symbols=... with random K-of-S sets.
-- Usage: wrk -t2 -c100 -d10s -s bench/wrk/snapshot.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), K (5).
local n = tonumber(os.getenv("SYMBOLS_N") or "50")
local prefix = os.getenv("SYMBOL_PREFIX") or "S"
local k = tonumber(os.getenv("K") or "5")

local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

-- A random set of k distinct symbols as "S3,S17,...".
local function symbol_set()
  local picked, list = {}, {}
  while #list < math.min(k, n) do
    local i = math.random(0, n - 1)
    if not picked[i] then picked[i] = true; list[#list + 1] = prefix .. i end
  end
  return table.concat(list, ",")
end

-- Building a request per call is costly in Lua, so pre-build a few hundred and cycle through them.
local requests = {}
local next_req = 1
function init(args)
  math.randomseed(1000 + (id or 0))
  for i = 1, 256 do
    requests[i] = wrk.format("GET", "/api/quotes?symbols=" .. symbol_set())
  end
end

function request()
  local r = requests[next_req]
  next_req = next_req % #requests + 1
  return r
end

-- One JSON line for bench/run-all.sh to record.
function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"script":"snapshot","requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
