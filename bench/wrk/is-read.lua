-- GET /api/v1/users/{u}/reads/{m} for random users and messages.
dofile("bench/wrk/report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/api/v1/users/%d/reads/%d", math.random(0, users - 1), math.random(0, 4000000000)))
end
done = report
