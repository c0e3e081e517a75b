-- wrk script: long-poll endpoint of comet-quotes, GET /api/poll?symbols=...&cursor=N&timeout=T.
-- Every answer's "cursor":N is parsed in response() and sent with the next poll, so polls wait for
-- real changes instead of timing out; run it while the feed or a publisher (pub.lua) changes prices.
-- wrk's Lua API does not say which connection a request or answer belongs to, so the cursor is kept
-- per wrk thread: the newest one any of the thread's connections has seen (a connection therefore
-- never asks for changes it could already know about, and never re-fetches old ones).
-- Usage: wrk -t2 -c100 -d10s --timeout 10s -s bench/wrk/poll.lua http://127.0.0.1:8090
-- Env: SYMBOLS_N (50), SYMBOL_PREFIX ("S"), K (5), POLL_TIMEOUT seconds (5; keep it under wrk's
-- --timeout so a quiet period is not counted as a wrk timeout).
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local poll_timeout = os.getenv("POLL_TIMEOUT") or "5"
setup = common.setup

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
  for i = 1, 64 do sets[i] = common.symbol_set() end
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
  for _, t in ipairs(common.threads) do
    ch = ch + (t:get("changes") or 0)
    em = em + (t:get("empty") or 0)
    bd = bd + (t:get("bad") or 0)
  end
  common.report("poll", string.format('"changes":%d,"empty":%d,"bad":%d,', ch, em, bd), summary, latency)
end
