//! The server-side script: one atomic settlement of a key — its four shared buckets, the fleet's
//! cooldown and margins, the learned model and each process's demand.
//!
//! Both keys carry the same hash tag (`{key}`), so on Redis Cluster and Valkey the script touches
//! one slot.

use std::sync::LazyLock;

/// `KEYS[1]`: the key's hash. `KEYS[2]`: the hash of the processes' demands (same hash tag).
///
/// `ARGV`: 1 time to live (ms), 2 lease (µs of refill, for `want = -1`), 3 this process's id,
/// 4 the model version this process has seen, 5 cooldown operation (0 none, 1 raise, 2 clear),
/// 6 its argument (raise: µs from now; clear: the cooldown version the process saw end), 7 the
/// margins' time constant (µs), 8–11 margin per dimension in millionths of the capacity (−1: no
/// news), 12 the model (JSON, empty: no news), 13 this process's demand (requests waiting or in
/// flight), 14 how long a demand counts without being renewed (µs). Then, per dimension
/// (requests, input, output, tokens), six numbers: `cap` (0 = no news: keep the shared one),
/// `window` (µs), `want` (units to lease; −1: a lease's worth of the shared rate), `debt` (units
/// spent beyond the lease, charged unconditionally), `back` (unused lease returned), `used`
/// (units used, to initialise a bucket Redis does not know, e.g. after a restart).
///
/// The hash holds per dimension `c<d>` (capacity), `w<d>` (window, µs), `f<d>` (the instant the
/// bucket is full again, µs on Redis's own clock, `TIME`; GCRA: `level = c − (f − now)·c/w`),
/// `m<d>`/`a<d>` (margin, millionths, set at `a<d>`, decaying); `cd` (cooldown end, µs), `cv`
/// (its version), `mv`/`mw`/`mb` (model version, writer, JSON).
///
/// While a cooldown runs nothing is granted; a margin is kept free in every grant; while the
/// shared bucket is below half full, a process is granted at most what it earned at its share of
/// the rate (its share of the fleet's demand), so the budget follows demand, not who asks first. Returns a flat
/// array: per dimension `granted, capacity, window_us, wait_us` (16 numbers; `wait_us` is how
/// long until the part of `want` not granted is there), then the cooldown's remaining µs (0:
/// none), its version, the four margins (millionths, decayed to now), the model version, its
/// writer, the model (empty unless newer than seen and written by another process), the
/// processes with demand, this process's share of the demand (millionths).
pub(super) const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local k = KEYS[1]
local ttl = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local me = ARGV[3]
local seen = tonumber(ARGV[4])
local h = redis.call('HMGET', k, 'cd', 'cv', 'mv', 'mw',
  'm0', 'a0', 'm1', 'a1', 'm2', 'a2', 'm3', 'a3')
local cd = tonumber(h[1]) or 0
local cv = tonumber(h[2]) or 0
local mv = tonumber(h[3]) or 0
local mw = h[4] or ''
if mw == false then mw = '' end
local decay = tonumber(ARGV[7])
local margin = {}
for d = 0, 3 do
  local m = tonumber(h[5 + 2 * d]) or 0
  local a = tonumber(h[6 + 2 * d]) or now
  if m > 0 and decay > 0 then m = m * math.exp(-math.max(0, now - a) / decay) end
  local inc = tonumber(ARGV[8 + d])
  if inc > m then
    m = math.min(inc, 500000)
    redis.call('HSET', k, 'm' .. d, string.format('%.0f', m), 'a' .. d, string.format('%.0f', now))
  end
  margin[d] = m
end
local op, arg = tonumber(ARGV[5]), tonumber(ARGV[6])
if op == 1 then
  local untl = now + arg
  if untl > cd + 10000 then
    cd = untl
    cv = cv + 1
    redis.call('HSET', k, 'cd', string.format('%.0f', cd), 'cv', cv)
  end
elseif op == 2 then
  if cv == arg and cd > now then
    cd = 0
    redis.call('HSET', k, 'cd', 0)
  end
end
if ARGV[12] ~= '' then
  mv = mv + 1
  mw = me
  redis.call('HSET', k, 'mv', mv, 'mw', me, 'mb', ARGV[12])
end
local cooling = cd > now
-- Demand: each process's requests waiting or in flight, renewed by its settlements.
local dk = KEYS[2]
local fresh = tonumber(ARGV[14])
local mine = tonumber(ARGV[13])
redis.call('HSET', dk, me, string.format('%.0f:%.0f', mine, now))
local all = redis.call('HGETALL', dk)
local total, active = 0, 0
for i = 1, #all, 2 do
  local v, at = string.match(all[i + 1], '^(%d+):(%d+)$')
  v, at = tonumber(v), tonumber(at)
  if (not at) or now - at > fresh then
    redis.call('HDEL', dk, all[i])
    redis.call('HDEL', k, 'g0:' .. all[i], 'g1:' .. all[i], 'g2:' .. all[i], 'g3:' .. all[i])
  else
    active = active + 1
    total = total + v
  end
end
local share = 1000000
if total > 0 then share = math.floor(1000000 * mine / total) elseif active > 0 then share = math.floor(1000000 / active) end
redis.call('PEXPIRE', dk, ttl)
local out = {}
for d = 0, 3 do
  local a = 15 + d * 6
  local cap, win = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local want, debt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local back, used = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local b = redis.call('HMGET', k, 'c' .. d, 'w' .. d, 'f' .. d)
  local scap, swin, full = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
  if cap > 0 and win > 0 then
    if scap and swin and full and (scap ~= cap or swin ~= win) then
      -- A newer limit: keep the units used.
      local u = math.max(full - now, 0) * scap / swin
      full = now + u * win / cap
    end
    scap, swin = cap, win
  end
  local o = 1 + d * 4
  if scap and swin and scap > 0 and swin > 0 then
    local per = swin / scap
    if want < 0 then want = math.max(1, math.min(scap, math.ceil(lease / per))) end
    if not full then full = now + used * per end
    if full < now then full = now end
    full = full + debt * per
    full = math.max(now, full - back * per)
    local keep = margin[d] * scap / 1000000
    local level = math.floor(scap - keep - (full - now) / per)
    local granted = 0
    if not cooling then granted = math.max(0, math.min(want, level)) end
    -- Fairness: while the shared bucket is short, a process takes at most what its share of the
    -- demand earned at its share of the rate (a bucket per process, `g<d>:<id>` its full
    -- instant, holding at most two leases of that rate), not whatever it asks for first.
    if level < scap / 2 then
      local gk = 'g' .. d .. ':' .. me
      local g = tonumber(redis.call('HGET', k, gk)) or 0
      local mine_per = per / math.max(share / 1000000, 0.001)
      local burst = math.max(1, math.ceil(2 * lease / mine_per))
      g = math.max(g, now - burst * mine_per)
      local credit = math.floor((now - g) / mine_per)
      granted = math.max(0, math.min(granted, credit))
      redis.call('HSET', k, gk, string.format('%.0f', g + granted * mine_per))
    end
    full = full + granted * per
    local wait = 0
    if granted < want then
      wait = math.ceil(math.max(0, (full - now) - (scap - keep - (want - granted)) * per))
      if cooling then wait = math.max(wait, cd - now) end
    end
    redis.call('HSET', k, 'c' .. d, string.format('%.0f', scap),
      'w' .. d, string.format('%.0f', swin), 'f' .. d, string.format('%.0f', full))
    out[o], out[o + 1], out[o + 2], out[o + 3] = granted, scap, swin, wait
  else
    out[o], out[o + 1], out[o + 2], out[o + 3] = 0, 0, 0, 0
  end
end
redis.call('PEXPIRE', k, ttl)
local left = 0
if cooling then left = cd - now end
out[17] = left
out[18] = cv
for d = 0, 3 do out[19 + d] = math.floor(margin[d]) end
out[23] = mv
out[24] = mw
local model = ''
if mv > seen and mw ~= me then model = redis.call('HGET', k, 'mb') or '' end
out[25] = model
out[26] = active
out[27] = share
return out
"#;

/// The compiled script (its SHA is computed once).
pub(super) static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SETTLE));
