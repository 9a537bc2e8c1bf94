-- wrk script: single-operation `set_tag` writes to POST /v1/facts on a world
-- from `orgwarden gen` (1M memberships: 1000 organizations, 50 workspaces
-- and 38 users each): every request a random member of a random
-- organization gets a random role in one of its workspaces. Prints
-- `RESULT <acknowledged writes/s> <acknowledged> <refused> <errors>`.
-- Environment: FACTS_TOKEN (default `bench`), ORGS, USERS, WORKSPACES.
local token = os.getenv("FACTS_TOKEN") or "bench"
local orgs = tonumber(os.getenv("ORGS") or "1000")
local users = tonumber(os.getenv("USERS") or "38")
local workspaces = tonumber(os.getenv("WORKSPACES") or "50")
local roles = { "viewer", "runner", "developer", "owner", "worker" }
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  acked, refused = 0, 0
end

function request()
  local o = math.random(0, orgs - 1)
  local body = string.format(
    '{"operations":[{"op":"set_tag","uid":{"type":"Prefect::User","id":"org%d-u%d"},'
      .. '"key":"org%d-ws%d","value":{"__entity":{"type":"Prefect::Role","id":"%s"}}}]}',
    o, math.random(1, users - 1), o, math.random(0, workspaces - 1), roles[math.random(1, #roles)])
  return wrk.format("POST", "/v1/facts",
    { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }, body)
end

function response(status, headers, body)
  if status == 200 then acked = acked + 1 else refused = refused + 1 end
end

function done(summary, latency, requests)
  local a, r = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    r = r + t:get("refused")
  end
  local secs = summary.duration / 1e6
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.0f %d %d %d p50_us %d p99_us %d\n", a / secs, a, r, errs,
    latency:percentile(50), latency:percentile(99)))
end
