-- get (docs/protocol.md §4): the record as Redis's clock sees it now.
-- ARGV: channel, key.
local _, now = clock()
local r = read()
if not r[3] then
    return { 'none', int(now) }
end
return answer('ok', now, '', r)
