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
/// flight), 14 how long a demand counts without being renewed (µs), 15 where this process's
/// reports start (0: they go on; 1: a key new here, that held and sent nothing before; 2: back
/// from pacing alone, having sent what no report holds). Then, per dimension
/// (requests, input, output, tokens), eleven numbers: `cap` (0 = no news: keep the shared one),
/// `window` (µs), `want` (units to lease; −1: a lease's worth of the shared rate), `debt` (units
/// spent beyond the lease, charged unconditionally), `back` (unused lease returned), `used`
/// (units used, to initialise a bucket Redis does not know, e.g. after a restart), `held` (units
/// this process holds or may get back before its next settlement: its lease, and output it
/// reserved lately), `held_for` (µs since its holding last fell to `held`: it spent nothing
/// since), `seen` (the server's units used as a reading of this process says, now, at its most
/// pessimistic; −1: none), `seen_least` (the same at its most optimistic: used at least),
/// `seen_age` (µs since the earliest instant that reading may count from, a bound on the round
/// trip to Redis included).
///
/// The hash holds per dimension `c<d>` (capacity), `w<d>` (window, µs), `f<d>` (the instant the
/// bucket is full again, µs on Redis's own clock, `TIME`; GCRA: `level = c − (f − now)·c/w`),
/// `m<d>`/`a<d>` (margin, millionths, set at `a<d>`, decaying), `g<d>:<id>` (a process's credit,
/// below); `cd` (cooldown end, µs), `cv` (its version), `mv`/`mw`/`mb` (model version, writer,
/// JSON), `born` (when Redis began keeping the key; 0 when a new fleet made it). The demand hash holds per process `demand:at:count` and its last `REPORTS`
/// settlements, newest first, each `t` then per dimension `z:hb:h:c`: when it settled, since
/// when it had held `hb` before it (`held`, reached at `z`), what it held after (`held − back +
/// granted`) and the units charged to it so far (grants and debts; `count`: its settlements
/// since its entry was made, from `REPORTS` on when what it held before its first is unknown).
///
/// A raised cooldown is also published on `{prefix}:{<key>}:cooldown` (`version:µs left`),
/// which every process subscribes to. While a cooldown runs nothing is granted; a margin is kept
/// free in every grant; a reading raises the level (never lowers it) to the server's less what
/// every process held at the reading's instant and was charged since (see the module docs);
/// while the shared bucket is below half full, a process is granted at most its credit (its
/// share of the demand times the shared rate, since it last spent it) and its share of what the
/// level holds beyond every process's credit (see the module docs). Returns a flat array: per dimension `granted, capacity, window_us, wait_us`
/// (16 numbers; `wait_us` is how long until a useful part of what was not granted is there),
/// then the cooldown's remaining µs (0: none), its version, the four margins (millionths,
/// decayed to now), the model version, its writer, the model (empty unless newer than seen and
/// written by another process), the processes with demand, this process's share of the demand
/// (millionths).
pub(super) const SETTLE: &str = r#"
local t = redis.call('TIME')
local function fmt(x) return string.format('%.0f', x) end
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
local start = tonumber(ARGV[15])
local fresh = tonumber(ARGV[14])
-- When Redis began keeping this key (`born`): made by a process that held and sent nothing
-- before (a new fleet), the reports cover every process from the start (0); made by any other
-- (Redis forgot the key: a restart, an expiry), processes that sent since may not have reported
-- yet, until `fresh` has passed (a process that does not settle that long counts as gone).
local born = tonumber(redis.call('HGET', k, 'born'))
if not born then
  if start == 1 then born = 0 else born = now end
  redis.call('HSET', k, 'born', fmt(born))
end
-- Demand: each process's requests waiting or in flight, renewed by its settlements, and its
-- last settlements (when, what it held after, what was charged to it so far).
local dk = KEYS[2]
local REPORTS = 4
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
-- A process back from pacing alone sent what no report holds: its reports start over. Its count
-- starts above `REPORTS` when what it held before its first report is unknown (back from pacing
-- alone, or forgotten by Redis): a reading older than its reports is then of no use.
if start ~= 0 then before = {} end
local count0 = before[3]
if not count0 then
  if start == 1 then count0 = 0 else count0 = REPORTS end
end
procs[#procs + 1] = { me, mine, before }
-- What process `f` held of dimension `d` at `tr` and was charged since: units that reached the
-- server after a reading taken at `tr`, or have yet to. Between two settlements a holding only
-- falls (a process spends it; grants and debts come at settlements): at `tr` it is at most what
-- the process held after its latest settlement before `tr`, or, once it had fallen to what it
-- held at the next one (`z` ≤ `tr`), that. The charges since are the difference of its running
-- count. `nxt`: the settlement under way (`z`, `hb`), for the process settling. A process whose
-- reports began after `tr` held nothing before if they began with it; nil when they do not
-- reach back to `tr` (or there are none: a process settling for the first time since it paced
-- alone or Redis forgot it).
local function owed(f, d, tr, nxt)
  local kept = math.floor((#f - 3) / 17)
  if kept <= 0 then
    if count0 == 0 and nxt then return 0 end
    return nil
  end
  local charged = f[8 + 4 * d]
  for j = 0, kept - 1 do
    local b = 4 + 17 * j
    if f[b] <= tr then
      local held = f[b + 3 + 4 * d]
      local z, hb
      if j > 0 then
        local nb = 4 + 17 * (j - 1)
        z, hb = f[nb + 1 + 4 * d], f[nb + 2 + 4 * d]
      elseif nxt then
        z, hb = nxt[1], nxt[2]
      end
      if z and z <= tr then held = math.min(held, hb) end
      return held + charged - f[b + 4 + 4 * d]
    end
  end
  if (f[3] or 0) <= kept then return charged end
  return nil
end
local since_z, since_hb = {}, {}
local charged_after = {}
local share = 1000000
if total > 0 then share = math.floor(1000000 * mine / total) elseif active > 0 then share = math.floor(1000000 / active) end
local out = {}
local held_after = {}
for d = 0, 3 do
  local a = 16 + d * 11
  local cap, win = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local want, debt = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local back, used = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local held, held_for = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local seen_used, seen_least = tonumber(ARGV[a + 8]), tonumber(ARGV[a + 9])
  local seen_age = tonumber(ARGV[a + 10])
  held_after[d] = math.max(0, held - back)
  charged_after[d] = (before[8 + 4 * d] or 0) + debt
  -- Since when this process held `held` (not before its last settlement).
  since_z[d], since_hb[d] = math.max(now - held_for, before[4] or 0), held
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
    -- raised to it, less what every process held at the reading's earliest instant and was
    -- charged since (`owed`), and this settlement's debt; never lowered (spending is charged
    -- here before it happens). The reading's own resolution is in it already: it is the latest
    -- `full_at` the limiter finds the reading allows. Skipped when a process's kept
    -- settlements do not reach back to the reading. While some process may have sent without
    -- reporting (within `fresh` of Redis forgetting the key: processes still pacing alone), a
    -- reading only lowers the level, to the server's at its most optimistic (`seen_least`):
    -- the server counted at least that, and what the processes pacing alone sent is in no
    -- report. Nothing is added for what the fleet holds: `owed` bounds it from above, and
    -- counted here it would keep the level below the server's.
    local tr = now - seen_age
    if seen_used >= 0 and tr >= born + fresh then
      local u = seen_used + debt
      for _, p in ipairs(procs) do
        local nxt = nil
        if p[1] == me then nxt = { since_z[d], since_hb[d] } end
        local o = owed(p[3], d, tr, nxt)
        if not o then u = nil break end
        u = u + o
      end
      if u then
        local reading = now + u * per
        if reading < full then full = reading end
      end
    elseif seen_used >= 0 then
      local reading = now + math.min(seen_least, seen_used) * per
      if reading > full then full = reading end
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
    held_after[d] = held_after[d] + granted
    charged_after[d] = charged_after[d] + granted
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
end
-- This settlement's report, then the previous ones (newest first, `REPORTS` in all).
local entry = { fmt(mine), fmt(now), fmt(count0 + 1), fmt(now) }
for d = 0, 3 do
  entry[#entry + 1] = fmt(since_z[d])
  entry[#entry + 1] = fmt(since_hb[d])
  entry[#entry + 1] = fmt(held_after[d])
  entry[#entry + 1] = fmt(charged_after[d])
end
local kept = math.max(0, math.floor((#before - 3) / 17))
for j = 0, math.min(kept, REPORTS - 1) - 1 do
  for i = 0, 16 do entry[#entry + 1] = fmt(before[4 + 17 * j + i]) end
end
redis.call('HSET', dk, me, table.concat(entry, ':'))
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
