-- POST /api/v1/users/{u}/reads with BENCH_BATCH random message ids per request.
dofile("bench/wrk/report.lua")
local users = tonumber(os.getenv("BENCH_USERS") or "1000000")
local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
math.randomseed(os.time() + 2)
local headers = { ["Content-Type"] = "application/json" }
request = function()
  local ids = {}
  for i = 1, batch do ids[i] = tostring(math.random(0, 4000000000)) end
  local body = '{"msgIds":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", string.format("/api/v1/users/%d/reads", math.random(0, users - 1)), headers, body)
end
done = report
