-- wrk script: long-poll endpoint of comet-quotes, GET /api/poll?symbols=...&cursor=N&timeout=T.
-- Every answer's "cursor":N is parsed in response() and sent with the next poll, so polls wait for
-- real changes instead of timing out; run it while the feed or a publisher (pub.lua) changes prices.
-- wrk's Lua API does not say which connection a request or answer belongs to, so the cursor is kept
-- per wrk thread: the newest one any of the thread's connections has seen (a connection therefore
-- never asks for changes it could already know about, and never re-fetches old ones).
-- Usage: wrk -t2 -c100 -d10s --timeout 10s -s bench/wrk/poll.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), K (5), POLL_TIMEOUT seconds (5; keep it under wrk's
-- --timeout so a quiet period is not counted as a wrk timeout).
local n = tonumber(os.getenv("SYMBOLS_N") or "50")
local prefix = os.getenv("SYMBOL_PREFIX") or "S"
local k = tonumber(os.getenv("K") or "5")
local poll_timeout = os.getenv("POLL_TIMEOUT") or "5"

local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

local function symbol_set()
  local picked, list = {}, {}
  while #list < math.min(k, n) do
    local i = math.random(0, n - 1)
    if not picked[i] then picked[i] = true; list[#list + 1] = prefix .. i end
  end
  return table.concat(list, ",")
end

-- The cursor is a microsecond-scale integer (~1.7e15), exact in a Lua double but kept as the string
-- the server sent so it is never reformatted (e.g. as 1.7e+15).
cursor = nil
changes = 0   -- answers that carried quotes
empty = 0     -- answers without quotes (the poll timed out)
bad = 0       -- non-200 answers
local sets = {}
local next_set = 1

function init(args)
  math.randomseed(2000 + (id or 0))
  for i = 1, 64 do sets[i] = symbol_set() end
end

function request()
  local s = sets[next_set]
  next_set = next_set % #sets + 1
  local path = "/api/poll?symbols=" .. s .. "&timeout=" .. poll_timeout
  if cursor then path = path .. "&cursor=" .. cursor end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; return end
  local c = body:match('"cursor"%s*:%s*(%d+)')
  if c and (cursor == nil or #c > #cursor or (#c == #cursor and c > cursor)) then
    cursor = c
  end
  if body:find('"quotes"%s*:%s*%[%s*%]') then empty = empty + 1 else changes = changes + 1 end
end

function done(summary, latency, requests_stats)
  local ch, em, bd = 0, 0, 0
  for _, t in ipairs(threads) do
    ch = ch + (t:get("changes") or 0)
    em = em + (t:get("empty") or 0)
    bd = bd + (t:get("bad") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"script":"poll","requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"changes":%d,"empty":%d,"bad":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    ch, em, bd, e.connect, e.read, e.write, e.status, e.timeout))
end
