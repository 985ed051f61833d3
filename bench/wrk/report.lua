-- Shared by the wrk scenarios: prints one machine-readable summary line at the end.
function report(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_us=%d p99_us=%d p999_us=%d max_us=%d errors=%d\n",
    summary.requests, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, errors))
end
