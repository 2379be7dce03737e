-- peek (the operator's listing, `RequestStore::list` and `counts`): the
-- record at keys[1] as `get` answers it, but without its result, which a
-- listing never shows: a page of records then costs Redis no copy of the
-- results it holds. Replies the record (`view`) or { 'none' }.
-- `no-writes`: answered under OOM too, and on any primary of a cluster for
-- one key at a time, so the store pipelines one call per key it scanned.
register('peek', { 'no-writes' }, function(keys, args)
    local r = load(keys[1])
    if not r then
        return { 'none' }
    end
    r[RESULT] = false
    local _, now = clock()
    return view('ok', r, now)
end)
