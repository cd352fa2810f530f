-- embark broker schema on PostgreSQL, version 1: the SQLite schema as its
-- migrations 0001–0003 leave it, in PostgreSQL's types.
-- Times are milliseconds since the Unix epoch (UTC). Every integer is BIGINT,
-- the type the shared row structs (i64) decode.

CREATE TABLE tasks (
    id            TEXT    NOT NULL PRIMARY KEY,          -- random UUID (v4), hyphenated lowercase
    -- Insertion order, which breaks ties within a millisecond as rowid does on
    -- SQLite. Not gapless nor in commit order: only the queue and listings use it.
    arrival       BIGINT  GENERATED ALWAYS AS IDENTITY,
    state         TEXT    NOT NULL
                  CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    repo_url      TEXT    NOT NULL,
    commit_id     TEXT    NOT NULL,
    prompt        TEXT    NOT NULL,
    auth_profile  TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    session_id    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    attempt       BIGINT  NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Per-task event counter, bumped with the row locked in the append
    -- transaction: seqs are gapless and in commit order.
    last_seq      BIGINT  NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    outcome_result     TEXT CHECK (outcome_result IN ('succeeded', 'failed')),
    outcome_final_text TEXT,
    outcome_reason     TEXT,
    finished_at        BIGINT
);

-- GET /v1/tasks?session_id=…: ORDER BY created_at DESC, arrival DESC (a backward scan).
CREATE INDEX tasks_by_session ON tasks (session_id, created_at, arrival);
-- Claim: WHERE state = 'queued' ORDER BY created_at, arrival; partial so it stays as small as the queue.
CREATE INDEX tasks_queued ON tasks (created_at, arrival) WHERE state = 'queued';

CREATE TABLE runners (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    token_hash  BYTEA   NOT NULL UNIQUE,                 -- blake3 of the runner token
    enrolled_at BIGINT  NOT NULL
);

CREATE TABLE attempts (
    task_id             TEXT    NOT NULL REFERENCES tasks (id),
    attempt             BIGINT  NOT NULL CHECK (attempt >= 1),
    runner_id           TEXT    NOT NULL REFERENCES runners (id),
    callback_token_hash BYTEA   NOT NULL,                -- blake3 of the callback token
    claimed_at          BIGINT  NOT NULL,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE events (
    task_id TEXT    NOT NULL REFERENCES tasks (id),
    seq     BIGINT  NOT NULL CHECK (seq >= 1),
    time    BIGINT  NOT NULL,
    kind    TEXT    NOT NULL,
    payload TEXT    NOT NULL,                            -- JSON, kept byte for byte as appended
    PRIMARY KEY (task_id, seq)
);

-- Every applied append under the batch id its writer chose, so a retried
-- append (its first answer lost) is answered from here instead of storing its
-- events twice. One row per batch, kept as long as the task.
CREATE TABLE event_batches (
    task_id   TEXT    NOT NULL REFERENCES tasks (id),
    batch_id  TEXT    NOT NULL CHECK (length(batch_id) BETWEEN 1 AND 64),
    attempt   BIGINT  NOT NULL CHECK (attempt >= 1),
    first_seq BIGINT  NOT NULL CHECK (first_seq >= 1),
    last_seq  BIGINT  NOT NULL CHECK (last_seq >= first_seq),
    PRIMARY KEY (task_id, batch_id),
    FOREIGN KEY (task_id, attempt) REFERENCES attempts (task_id, attempt)
);
