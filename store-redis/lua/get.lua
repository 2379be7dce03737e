-- get (design §4): the record as Redis's clock sees it now.
-- ARGV: channel, key.
local _, now = clock()
if redis.call('EXISTS', KEYS[1]) == 0 then
    return { 'none', int(now) }
end
return answer('ok', now)
