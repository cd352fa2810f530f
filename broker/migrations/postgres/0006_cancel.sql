-- embark broker schema on PostgreSQL: cancellation (decision D19), as the
-- SQLite migration 0008_cancel.sql.
-- When a client asked to cancel a running task; its runner is told over the
-- control channel and the task's completion then ends it `cancelled`. NULL
-- for every task never cancelled while it ran. A task cancelled while queued
-- goes straight to `cancelled` (outcome_result `cancelled`, outcome_code
-- `cancelled_by_user`, which the leases migration made possible).
ALTER TABLE tasks ADD COLUMN cancel_requested_at BIGINT;

-- The control channel's question: this runner's running tasks with a cancel
-- request. Partial, so it holds only the tasks being cancelled right now.
CREATE INDEX tasks_cancel_requested ON tasks (id) WHERE state = 'running' AND cancel_requested_at IS NOT NULL;
