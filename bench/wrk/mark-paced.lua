-- PUT /api/v1/users/{u}/reads/{m}, each connection pausing BENCH_DELAY_MS between
-- requests, for a steady load below the server's capacity.
dofile("bench/wrk/report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "2")
math.randomseed(os.time() + 3)
request = function()
  return wrk.format("PUT", string.format("/api/v1/users/%d/reads/%d", math.random(0, users - 1), math.random(0, 4000000000)))
end
delay = function()
  return pause
end
done = report
