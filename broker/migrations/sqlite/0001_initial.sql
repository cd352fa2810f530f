-- embark broker schema, version 1.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE tasks (
    id            TEXT    NOT NULL PRIMARY KEY,          -- UUIDv7, hyphenated lowercase
    state         TEXT    NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
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
    outcome_result     TEXT CHECK (outcome_result IN ('succeeded', 'failed')),
    outcome_final_text TEXT,
    outcome_reason     TEXT,
    finished_at        INTEGER
) STRICT;

-- GET /v1/tasks?session_id=…: newest first.
CREATE INDEX tasks_by_session ON tasks (session_id, created_at DESC, id DESC);
-- Claim: the oldest queued task; partial so it stays as small as the queue.
CREATE INDEX tasks_queued ON tasks (created_at, id) WHERE state = 'queued';

CREATE TABLE runners (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    token_hash  BLOB    NOT NULL UNIQUE,                 -- blake3 of the runner token
    enrolled_at INTEGER NOT NULL
) STRICT;

CREATE TABLE attempts (
    task_id             TEXT    NOT NULL REFERENCES tasks (id),
    attempt             INTEGER NOT NULL CHECK (attempt >= 1),
    runner_id           TEXT    NOT NULL REFERENCES runners (id),
    callback_token_hash BLOB    NOT NULL,                -- blake3 of the callback token
    claimed_at          INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
) STRICT, WITHOUT ROWID;

CREATE TABLE events (
    task_id TEXT    NOT NULL REFERENCES tasks (id),
    seq     INTEGER NOT NULL CHECK (seq >= 1),
    time    INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    payload TEXT    NOT NULL,                            -- JSON
    PRIMARY KEY (task_id, seq)
) STRICT, WITHOUT ROWID;
