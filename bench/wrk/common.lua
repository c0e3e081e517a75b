-- Shared by the wrk scripts (loaded with dofile): the symbol settings, random symbol sets, thread
-- ids for seeding, and the one `wrk-json {...}` line bench/run-all.sh records for each run.
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), K (5).
local M = {}
M.n = tonumber(os.getenv("SYMBOLS_N") or "50")
M.prefix = os.getenv("SYMBOL_PREFIX") or "S"
M.k = tonumber(os.getenv("K") or "5")
M.threads = {}

-- Give every wrk thread an id (its random seed) and keep it, so done() can read its counters.
local counter = 0
function M.setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(M.threads, thread)
end

-- A random set of k distinct symbols as "S3,S17,...".
function M.symbol_set()
  local picked, list = {}, {}
  while #list < math.min(M.k, M.n) do
    local i = math.random(0, M.n - 1)
    if not picked[i] then picked[i] = true; list[#list + 1] = M.prefix .. i end
  end
  return table.concat(list, ",")
end

-- The summary line; `extra` is more JSON fields, each followed by a comma (or "").
function M.report(script, extra, summary, latency)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"script":"%s",%s"requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    script, extra, summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end

return M
