-- wrk script for every load run of bench/run.sh (wrk 4.x, LuaJIT).
--
-- Read from the environment when wrk loads the script (wrk decides from the
-- functions defined at load time whether to call Lua per request, so the
-- cheap plain run defines only done()):
--   BENCH_TOKENS=FILE  one token per line; each request carries the next one
--                      ("Authorization: Bearer <token>"), cycling through the file
--   BENCH_OFFSET=N     start at token N, so that consecutive runs continue the cycle
--                      instead of replaying the tokens the previous run sent
--   BENCH_RATE=R       pace the requests at R per second in total (all threads):
--                      each thread hands out send slots 1/rate apart through delay()
--   BENCH_THREADS=T    the -t value (the pacing and token stride need it)
--   BENCH_STATUS=1     count responses per status code (slower: wrk hands every
--                      response to Lua)
-- done() prints one line "WRKJSON {...}": counts, errors, latency percentiles in us
-- and, with BENCH_STATUS=1, "status": {"200": n, ...}.

local tokens_file = os.getenv("BENCH_TOKENS")
local offset = tonumber(os.getenv("BENCH_OFFSET") or "0") or 0
local rate = tonumber(os.getenv("BENCH_RATE") or "")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
local want_status = os.getenv("BENCH_STATUS") == "1"

local threads = {}   -- main state: the thread objects, for done()
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs, ntok, nexti = nil, 0, 0

function init(args)
  counts = {}   -- global: read back with thread:get("counts")
  if tokens_file then
    reqs = {}
    for line in io.lines(tokens_file) do
      if #line > 0 then
        reqs[#reqs + 1] = wrk.format(nil, nil, { Authorization = "Bearer " .. line })
      end
    end
    ntok = #reqs
    if ntok == 0 then error("no tokens in " .. tokens_file) end
    nexti = (offset + id) % ntok
  end
end

if tokens_file then
  -- thread `id` sends tokens id, id+T, id+2T, ... (starting at BENCH_OFFSET)
  function request()
    local r = reqs[nexti + 1]
    nexti = (nexti + nthreads) % ntok
    return r
  end
end

if rate and rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = 1000 * nthreads / rate
  local next_slot = nil
  -- Called before each request after the first on a connection; returns how
  -- long (ms, wrk truncates to whole ms) to wait. Each call claims the next
  -- free slot, so the thread's sends follow the schedule whatever the number of
  -- connections, as long as one is free. A schedule more than 100 ms behind
  -- (the server cannot keep up) restarts from now instead of bursting.
  function delay()
    local t = now_ms()
    if next_slot == nil or next_slot < t - 100 then next_slot = t end
    next_slot = next_slot + interval
    local d = next_slot - t
    if d < 0 then return 0 end
    return d
  end
end

if want_status then
  function response(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local status = ""
  if want_status then
    local agg = {}
    for _, t in ipairs(threads) do
      for code, n in pairs(t:get("counts") or {}) do agg[code] = (agg[code] or 0) + n end
    end
    local parts = {}
    for code, n in pairs(agg) do parts[#parts + 1] = string.format('"%d":%d', code, n) end
    status = ',"status":{' .. table.concat(parts, ",") .. '}'
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    status))
end
