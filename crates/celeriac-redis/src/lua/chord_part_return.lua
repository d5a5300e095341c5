-- Records finished chord header parts and says whether they complete the
-- chord (Celery 5.x's native join, see chord.rs), for one part or for many
-- parts of the same chord at once. Runs after lua/chord_join.lua.
-- KEYS: K.j, K.t, K.s, K.d, K.c.
-- ARGV: expires, claim ttl, claim token, then for each part: task id,
-- part record, index score.
-- Returns the parts in index order to the call that completes the chord,
-- an empty list to every other.
return join_chord(KEYS, tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV, 4, #ARGV, 3) or {}
