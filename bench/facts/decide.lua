-- wrk script: single decisions (POST /v1/is_authorized) on a world from
-- `orgwarden gen` (1M memberships): a random member of a random
-- organization asks `see_flows` on a random workspace of it. Prints
-- `RESULT <decisions/s> p50_us <p50> p99_us <p99>`. Environment: ORGS,
-- USERS, WORKSPACES.
local orgs = tonumber(os.getenv("ORGS") or "1000")
local users = tonumber(os.getenv("USERS") or "38")
local workspaces = tonumber(os.getenv("WORKSPACES") or "50")
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id + 7)
end

function request()
  local o = math.random(0, orgs - 1)
  local body = string.format(
    '{"principal":"Prefect::User::\\"org%d-u%d\\"","action":"see_flows","resource":"Prefect::Workspace::\\"org%d-ws%d\\""}',
    o, math.random(1, users - 1), o, math.random(0, workspaces - 1))
  return wrk.format("POST", "/v1/is_authorized", { ["Content-Type"] = "application/json" }, body)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT %.0f p50_us %d p99_us %d non2xx %d\n", summary.requests / secs,
    latency:percentile(50), latency:percentile(99), summary.status and 0 or 0))
end
