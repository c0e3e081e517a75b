-- wrk script: the static page, GET / (also usable against the hello reference server, which answers
-- everything). Set IF_NONE_MATCH to an ETag to measure the 304 path instead.
-- Usage: wrk -t2 -c100 -d10s -s bench/wrk/static.lua http://127.0.0.1:8090
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
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
  common.report("static", "", summary, latency)
end
