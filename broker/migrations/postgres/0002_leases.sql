-- embark broker schema on PostgreSQL, version 2: leases, the stale state,
-- reason codes and client silence (issue 7, decision D18), as SQLite's
-- migration 0004 makes them:
--
-- - state may be 'stale' (an attempt's lease lapsed) and a finished task's
--   result may be 'cancelled';
-- - outcome_code: the machine-readable reason (stale_timeout, pi_failed, …);
-- - lease_renewed_at: the last report (claim, events, heartbeat) of the
--   current attempt; the lease lapses heartbeat_timeout after it;
-- - client_seen_at: the last create or read of the task (or its session) by
--   a client; a non-terminal task silent longer than client_silence is
--   cancelled as abandoned.

ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('queued', 'running', 'stale', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE tasks DROP CONSTRAINT tasks_outcome_result_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_outcome_result_check
    CHECK (outcome_result IN ('succeeded', 'failed', 'cancelled'));

ALTER TABLE tasks ADD COLUMN outcome_code TEXT;
ALTER TABLE tasks ADD COLUMN lease_renewed_at BIGINT;
ALTER TABLE tasks ADD COLUMN client_seen_at BIGINT;
UPDATE tasks SET client_seen_at = updated_at,
                 lease_renewed_at = CASE WHEN state = 'running' THEN updated_at END;
ALTER TABLE tasks ALTER COLUMN client_seen_at SET NOT NULL;

-- The reaper: claimed tasks by their last report, unfinished tasks by their client's last visit.
CREATE INDEX tasks_leased ON tasks (lease_renewed_at) WHERE state IN ('running', 'stale');
CREATE INDEX tasks_unfinished ON tasks (client_seen_at) WHERE state IN ('queued', 'running', 'stale');
