-- wrk script: POST {base}/events with NDJSON bodies (batch requests) of
-- BATCH events each, over ID_COUNT distinct ids. Each line looks like
-- {"product_id":"p01234","price":123.45,"stock":678}, as in post.lua. A
-- pool of POOL pre-built requests per wrk thread is cycled.
-- Env: BATCH (default 1000), ID_COUNT (default 10000), POOL (default 8),
-- SEED (default 1).
-- done() prints one machine-readable "RESULT ..." line, as post.lua's.
local batch = tonumber(os.getenv("BATCH") or "1000")
local id_count = tonumber(os.getenv("ID_COUNT") or "10000")
local pool_size = tonumber(os.getenv("POOL") or "8")
local seed = tonumber(os.getenv("SEED") or "1")
local prefix = (wrk.path or "/"):gsub("/+$", "")
local reqs, i, nthreads = {}, 0, 0

function setup(thread)
   nthreads = nthreads + 1
   thread:set("tid", nthreads)
end

function init(args)
   math.randomseed(seed * 7919 + (tid or 1))
   local headers = {}
   for k, v in pairs(wrk.headers) do headers[k] = v end
   headers["Content-Type"] = "application/x-ndjson"
   for n = 1, pool_size do
      local lines = {}
      for l = 1, batch do
         lines[l] = string.format('{"product_id":"p%05d","price":%d.%02d,"stock":%d}\n',
            math.random(0, id_count - 1), math.random(0, 999), math.random(0, 99),
            math.random(0, 100000))
      end
      reqs[n] = wrk.format("POST", prefix .. "/events", headers, table.concat(lines))
   end
end

function request()
   i = i % pool_size + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format(
      "RESULT rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d reqs=%d non2xx=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
      summary.requests / secs, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, summary.requests, e.status,
      e.connect, e.read, e.write, e.timeout))
end
