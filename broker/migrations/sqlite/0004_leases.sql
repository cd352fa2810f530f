-- no-transaction
-- embark broker schema, version 4: leases, the stale state, reason codes and
-- client silence (issue 7, decision D18).
--
-- - state may be 'stale' (an attempt's lease lapsed) and a finished task's
--   result may be 'cancelled';
-- - outcome_code: the machine-readable reason (stale_timeout, pi_failed, …);
-- - lease_renewed_at: the last report (claim, events, heartbeat) of the
--   current attempt; the lease lapses heartbeat_timeout after it, so a new
--   timeout applies to every lease at once;
-- - client_seen_at: the last create or read of the task (or its session) by
--   a client; a non-terminal task silent longer than client_silence is
--   cancelled as abandoned.
--
-- SQLite cannot change a CHECK constraint, so the table is rebuilt the way
-- SQLite's documentation says (ALTER TABLE, "other kinds of table schema
-- changes"): foreign keys off, which cannot change inside a transaction, so
-- this migration opens its own; a new table, the rows copied (rowid too: it
-- orders tasks created in the same millisecond), the old one dropped, the
-- new one renamed, then the foreign keys on again. The other
-- tables' references name `tasks` and so point at the new table.

PRAGMA foreign_keys = OFF;

BEGIN IMMEDIATE;

CREATE TABLE tasks_with_leases (
    id            TEXT    NOT NULL PRIMARY KEY,          -- random UUID (v4), hyphenated lowercase
    state         TEXT    NOT NULL
                  CHECK (state IN ('queued', 'running', 'stale', 'succeeded', 'failed', 'cancelled')),
    repo_url      TEXT    NOT NULL,
    commit_id     TEXT    NOT NULL,                      -- "commit" is an SQL keyword
    prompt        TEXT    NOT NULL,
    auth_profile  TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    session_id    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Per-task event counter, bumped in the append transaction: seqs are gapless and in commit order.
    last_seq      INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    outcome_result     TEXT CHECK (outcome_result IN ('succeeded', 'failed', 'cancelled')),
    outcome_final_text TEXT,
    outcome_reason     TEXT,
    finished_at        INTEGER,
    outcome_code       TEXT,
    lease_renewed_at   INTEGER,
    client_seen_at     INTEGER NOT NULL
) STRICT;

INSERT INTO tasks_with_leases (rowid, id, state, repo_url, commit_id, prompt, auth_profile, provider, model, session_id,
                   created_at, updated_at, attempt, last_seq, outcome_result, outcome_final_text, outcome_reason,
                   finished_at, outcome_code, lease_renewed_at, client_seen_at)
SELECT rowid, id, state, repo_url, commit_id, prompt, auth_profile, provider, model, session_id,
       created_at, updated_at, attempt, last_seq, outcome_result, outcome_final_text, outcome_reason,
       finished_at, NULL, CASE WHEN state = 'running' THEN updated_at END, updated_at
FROM tasks;

DROP TABLE tasks;
ALTER TABLE tasks_with_leases RENAME TO tasks;

-- The indexes of 0003, on the new table.
CREATE INDEX tasks_by_session ON tasks (session_id, created_at);
CREATE INDEX tasks_queued ON tasks (created_at) WHERE state = 'queued';
-- The reaper: claimed tasks by their last report, unfinished tasks by their client's last visit.
CREATE INDEX tasks_leased ON tasks (lease_renewed_at) WHERE state IN ('running', 'stale');
CREATE INDEX tasks_unfinished ON tasks (client_seen_at) WHERE state IN ('queued', 'running', 'stale');

COMMIT;

PRAGMA foreign_keys = ON;
