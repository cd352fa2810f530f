-- embark broker schema, version 3: indexes that serve the task queries as written.
--
-- Both queries order by (created_at, rowid): task ids are random UUIDs (v4),
-- not UUIDv7 as the comment on tasks.id in 0001 says, so only rowid breaks
-- ties within a millisecond in insertion order. (0001 stays as it was: sqlx
-- checksums applied migrations.) The indexes of 0001 end in id, so SQLite
-- sorted their results in a temporary B-tree; an index ends in rowid
-- implicitly, which is exactly the order wanted.

-- GET /v1/tasks?session_id=…: WHERE session_id = ? ORDER BY created_at DESC, rowid DESC.
DROP INDEX tasks_by_session;
CREATE INDEX tasks_by_session ON tasks (session_id, created_at);

-- Claim: WHERE state = 'queued' ORDER BY created_at, rowid; partial so it stays as small as the queue.
DROP INDEX tasks_queued;
CREATE INDEX tasks_queued ON tasks (created_at) WHERE state = 'queued';
