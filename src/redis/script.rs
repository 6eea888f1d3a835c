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
/// (requests, input, output, tokens), nine numbers: `cap` (0 = no news: keep the shared one),
/// `window` (µs), `want` (units to lease; −1: a lease's worth of the shared rate), `debt` (units
/// spent beyond the lease, charged unconditionally), `back` (unused lease returned), `used`
/// (units used, to initialise a bucket Redis does not know, e.g. after a restart), `held` (units
/// of lease this process holds), `seen` (the server's units used as a reading of this process
/// says, now; −1: none), `seen_n` (the count of grants this process read before that reading).
///
/// The hash holds per dimension `c<d>` (capacity), `w<d>` (window, µs), `f<d>` (the instant the
/// bucket is full again, µs on Redis's own clock, `TIME`; GCRA: `level = c − (f − now)·c/w`),
/// `m<d>`/`a<d>` (margin, millionths, set at `a<d>`, decaying), `n<d>` (units granted so far),
/// `g<d>:<id>` (a process's credit, below); `cd` (cooldown end, µs), `cv` (its version),
/// `mv`/`mw`/`mb` (model version, writer, JSON). The demand hash holds per process
/// `demand:at:since:p0..p3:q0..q3`: its demand, when it was reported, and the most it held of
/// each dimension since `since` (`p`) and in the period before (`q`).
///
/// A raised cooldown is also published on `{prefix}:{<key>}:cooldown` (`version:µs left`),
/// which every process subscribes to. While a cooldown runs nothing is granted; a margin is kept free in every grant; a reading
/// raises the level (never lowers it); while the shared bucket is below half full, a process is
/// granted at most its credit (its share of the demand times the shared rate, since it last
/// spent it) and its share of what the level holds beyond every process's credit (see the
/// module docs). Returns a flat array: per dimension `granted, capacity, window_us, wait_us`
/// (16 numbers; `wait_us` is how long until a useful part of what was not granted is there),
/// then the cooldown's remaining µs (0: none), its version, the four margins (millionths,
/// decayed to now), the model version, its writer, the model (empty unless newer than seen and
/// written by another process), the processes with demand, this process's share of the demand
/// (millionths), and per dimension the count of grants (`n<d>`).
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
    -- Every process subscribed honours it at once (version, µs left).
    redis.call('PUBLISH', k .. ':cooldown', string.format('%.0f:%.0f', cv, arg))
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
-- Demand: each process's requests waiting or in flight, renewed by its settlements, and the
-- most it held of each dimension lately (`pat`: since when; `p`: that peak; `q`: the one before).
local dk = KEYS[2]
local fresh = tonumber(ARGV[14])
local mine = tonumber(ARGV[13])
local all = redis.call('HGETALL', dk)
local total, active = mine, 1
local procs = {}
local before = {}
for i = 1, #all, 2 do
  local f = {}
  for n in string.gmatch(all[i + 1], '%d+') do f[#f + 1] = tonumber(n) end
  local v, at = f[1], f[2]
  if (not at) or now - at > fresh then
    redis.call('HDEL', dk, all[i])
    redis.call('HDEL', k, 'g0:' .. all[i], 'g1:' .. all[i], 'g2:' .. all[i], 'g3:' .. all[i])
  elseif all[i] == me then
    before = f
  else
    active = active + 1
    total = total + v
    procs[#procs + 1] = { all[i], v, f }
  end
end
procs[#procs + 1] = { me, mine, before }
-- The most a process may have held since `fresh` ago, of dimension `d`.
local function held_lately(f, d)
  return math.max(f[4 + d] or 0, f[8 + d] or 0)
end
local share = 1000000
if total > 0 then share = math.floor(1000000 * mine / total) elseif active > 0 then share = math.floor(1000000 / active) end
local out = {}
local held_after = {}
for d = 0, 3 do
  local a = 15 + d * 9
  local cap, win = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local want, debt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local back, used = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local held, seen_used, seen_n = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
  local n = tonumber(redis.call('HGET', k, 'n' .. d)) or 0
  held_after[d] = math.max(0, held - back)
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
    -- A server's reading (its units used, now, at its most pessimistic): the shared level is
    -- raised to it, less what the fleet may have held when it was taken (each process's most
    -- held lately), what was granted since (`n<d>` counts every grant) and a thousandth of the
    -- capacity for what reached the server after the reading though sent before it; never
    -- lowered (spending is charged here before it happens). The reading's own resolution is
    -- in it already: it is the latest `full_at` the limiter finds the reading allows.
    if seen_used >= 0 then
      local hold = 0
      for _, p in ipairs(procs) do hold = hold + held_lately(p[3], d) end
      hold = hold + held
      local since = n - seen_n
      if since < 0 then since = n end
      local u = seen_used + hold + since + math.max(1, math.ceil(scap / 1000))
      local reading = now + u * per
      if reading < full then full = reading end
    end
    local keep = margin[d] * scap / 1000000
    local level = math.floor(scap - keep - (full - now) / per)
    local granted = 0
    if not cooling then granted = math.max(0, math.min(want, level)) end
    local wait = 0
    local need = want - granted
    -- Fairness: while the shared bucket is short, each process has a credit that refills at its
    -- share of the demand times the shared rate (`g<d>:<id>`: the instant its credit was
    -- empty; it holds at most two leases of that rate, and starts empty). Since the shares add
    -- up to one, the credits together never exceed the level: every process finds its credit
    -- there whenever it asks, whoever asked first. What the level holds beyond all the credits
    -- (a head start, a process gone quiet) is shared by the same shares.
    if level < scap / 2 then
      local function credit_of(id, s)
        local pp = per / math.max(s, 0.001)
        local burst = math.max(1, math.ceil(2 * lease / pp))
        local g = tonumber(redis.call('HGET', k, 'g' .. d .. ':' .. id))
        if not g then return 0, pp, burst, nil end
        g = math.max(g, now - burst * pp)
        return math.floor((now - g) / pp), pp, burst, g
      end
      local sum = 0
      for _, p in ipairs(procs) do
        if p[1] ~= me then
          local s = 1 / math.max(active, 1)
          if total > 0 then s = p[2] / total end
          sum = sum + credit_of(p[1], s)
        end
      end
      local s = share / 1000000
      local credit, mine_per, burst, g = credit_of(me, s)
      g = g or now
      sum = sum + credit
      local extra = math.floor(math.max(0, level - sum) * s)
      local allowed = credit + extra
      granted = math.max(0, math.min(granted, allowed))
      local from_credit = math.min(granted, credit)
      redis.call('HSET', k, 'g' .. d .. ':' .. me, string.format('%.0f', g + from_credit * mine_per))
      if granted < want and not cooling then
        -- Ask again when the credit holds a lease of this process's rate (or the rest).
        need = math.min(want - granted, math.max(1, math.ceil(lease / mine_per)))
        local left = credit - from_credit
        wait = math.ceil(math.max(0, (need - left) * mine_per - ((now - g) - credit * mine_per)))
      end
    end
    full = full + granted * per
    n = n + granted
    held_after[d] = held_after[d] + granted
    redis.call('HSET', k, 'n' .. d, string.format('%.0f', n))
    if granted < want then
      wait = math.max(wait, math.ceil(math.max(0, (full - now) - (scap - keep - need) * per)))
      if cooling then wait = math.max(wait, cd - now) end
    end
    redis.call('HSET', k, 'c' .. d, string.format('%.0f', scap),
      'w' .. d, string.format('%.0f', swin), 'f' .. d, string.format('%.0f', full))
    out[o], out[o + 1], out[o + 2], out[o + 3] = granted, scap, swin, wait
  else
    out[o], out[o + 1], out[o + 2], out[o + 3] = 0, 0, 0, 0
  end
  out[28 + d] = n
end
local pat, p, q = before[3], {}, {}
for d = 0, 3 do
  p[d], q[d] = before[4 + d] or 0, before[8 + d] or 0
end
if (not pat) or now - pat > fresh then
  pat = now
  for d = 0, 3 do p[d], q[d] = 0, p[d] end
end
for d = 0, 3 do p[d] = math.max(p[d], held_after[d]) end
redis.call('HSET', dk, me, string.format('%.0f:%.0f:%.0f:%.0f:%.0f:%.0f:%.0f:%.0f:%.0f:%.0f:%.0f',
  mine, now, pat, p[0], p[1], p[2], p[3], q[0], q[1], q[2], q[3]))
redis.call('PEXPIRE', dk, ttl)
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
