-- embark broker schema on PostgreSQL, version 3 (SQLite's 0005_tokens): named
-- client tokens, task owners, client request ids, revocable runners.

-- A client token is kept as the blake3 hash of the token, never in clear.
-- A revoked token keeps its row (its tasks stay its own, the listing shows it),
-- and its name may be used again by a new token, which sees none of its tasks.
CREATE TABLE client_tokens (
    id           TEXT    NOT NULL PRIMARY KEY,           -- random UUID: what a task's owner names
    name         TEXT    NOT NULL,
    token_hash   BYTEA   NOT NULL UNIQUE,                -- blake3 of the token
    created_at   BIGINT  NOT NULL,
    last_used_at BIGINT,                                 -- updated at most once a minute
    revoked_at   BIGINT
);

-- One live token per name.
CREATE UNIQUE INDEX client_tokens_live_name ON client_tokens (name) WHERE revoked_at IS NULL;

-- Which credential created the task: '' for the client secret (the operator),
-- else the id of the client token.
ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT '';
-- The creator's idempotency key and the blake3 of the body it came with.
ALTER TABLE tasks ADD COLUMN client_request_id TEXT
    CHECK (client_request_id IS NULL OR length(client_request_id) BETWEEN 1 AND 64);
ALTER TABLE tasks ADD COLUMN request_hash BYTEA;

-- A retried create finds its first task here; a second task with the same key cannot exist.
CREATE UNIQUE INDEX tasks_by_request ON tasks (owner, client_request_id) WHERE client_request_id IS NOT NULL;

-- A revoked runner's token (and its attempts' callback tokens) are refused.
ALTER TABLE runners ADD COLUMN revoked_at BIGINT;
