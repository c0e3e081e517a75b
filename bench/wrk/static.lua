-- wrk script: the static page, GET / (also usable against the hello reference server, which answers
-- everything). Set IF_NONE_MATCH to an ETag to measure the 304 path instead.
-- Usage: wrk -t2 -c100 -d10s -s bench/wrk/static.lua http://127.0.0.1:8090
local path = os.getenv("STATIC_PATH") or "/"
local etag = os.getenv("IF_NONE_MATCH")

local req
function init(args)
  local headers = {}
  if etag and etag ~= "" then headers["If-None-Match"] = etag end
  req = wrk.format("GET", path, headers)
end

function request()
  return req
end

function done(summary, latency, requests_stats)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"script":"static","requests":%d,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
