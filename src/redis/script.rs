//! The server-side script: one atomic settlement of a key's four shared buckets.

use std::sync::LazyLock;

/// `KEYS[1]`: the key's hash. `ARGV[1]`: time to live in milliseconds. Then, per dimension
/// (requests, input, output, tokens), six numbers: `cap` (0 = no news: keep the shared one),
/// `window` (µs), `want` (units to lease), `debt` (units spent beyond the lease, charged
/// unconditionally), `back` (unused lease returned), `used` (units used, to initialise a bucket
/// Redis does not know, e.g. after a restart).
///
/// Per dimension the hash holds `c<d>` (capacity), `w<d>` (window, µs) and `f<d>` (the instant
/// the bucket is full again, µs on Redis's own clock, `TIME`). GCRA: `level = c − (f − now)·c/w`.
///
/// Returns per dimension `{granted, capacity, window_us, wait_us}`: `wait_us` is how long until
/// the part of `want` not granted is there (0 when all of it was).
pub(super) const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[1])
local out = {}
local touched = false
for d = 0, 3 do
  local a = 2 + d * 6
  local cap, win = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local want, debt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local back, used = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local h = redis.call('HMGET', KEYS[1], 'c' .. d, 'w' .. d, 'f' .. d)
  local scap, swin, full = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
  if cap > 0 and win > 0 then
    if scap and swin and full and (scap ~= cap or swin ~= win) then
      -- A newer limit: keep the units used.
      local u = math.max(full - now, 0) * scap / swin
      full = now + u * win / cap
    end
    scap, swin = cap, win
  end
  if scap and swin and scap > 0 and swin > 0 then
    local per = swin / scap
    if not full then full = now + used * per end
    if full < now then full = now end
    full = full + debt * per
    full = math.max(now, full - back * per)
    local level = math.floor(scap - (full - now) / per)
    local granted = math.max(0, math.min(want, level))
    full = full + granted * per
    local wait = 0
    if granted < want then
      wait = math.ceil(math.max(0, (full - now) - (scap - (want - granted)) * per))
    end
    redis.call('HSET', KEYS[1], 'c' .. d, string.format('%.0f', scap),
      'w' .. d, string.format('%.0f', swin), 'f' .. d, string.format('%.0f', full))
    touched = true
    out[d + 1] = {granted, scap, swin, wait}
  else
    out[d + 1] = {0, 0, 0, 0}
  end
end
if touched then redis.call('PEXPIRE', KEYS[1], ttl) end
return out
"#;

/// The compiled script (its SHA is computed once).
pub(super) static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));
