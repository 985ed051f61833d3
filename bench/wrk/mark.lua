-- PUT /api/v1/users/{u}/reads/{m}: one durable mark per request.
-- BENCH_QUERY is appended to each path, e.g. "?ack=all".
dofile("bench/wrk/report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
local query = os.getenv("BENCH_QUERY") or ""
math.randomseed(os.time() + 1)
request = function()
  return wrk.format("PUT", string.format("/api/v1/users/%d/reads/%d%s", math.random(0, users - 1), math.random(0, 4000000000), query))
end
done = report
