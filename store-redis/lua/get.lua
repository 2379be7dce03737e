-- get (docs/protocol.md §4): the record as Redis's clock sees it now.
-- Replies the record (`view`) or { 'none' }. `no-writes`: answered under
-- OOM too.
register('get', { 'no-writes' }, function(keys, args)
    local r = load(keys[1])
    if not r then
        return { 'none' }
    end
    local _, now = clock()
    return view('ok', r, now)
end)
