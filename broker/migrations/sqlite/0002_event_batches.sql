-- embark broker schema, version 2: idempotent event appends.
-- Every applied append is recorded under the batch id its writer chose, so a
-- retried append (its first answer lost) is answered from here instead of
-- storing its events twice. One row per batch, kept as long as the task.

CREATE TABLE event_batches (
    task_id   TEXT    NOT NULL REFERENCES tasks (id),
    batch_id  TEXT    NOT NULL CHECK (length(batch_id) BETWEEN 1 AND 64),
    attempt   INTEGER NOT NULL CHECK (attempt >= 1),
    first_seq INTEGER NOT NULL CHECK (first_seq >= 1),
    last_seq  INTEGER NOT NULL CHECK (last_seq >= first_seq),
    PRIMARY KEY (task_id, batch_id),
    FOREIGN KEY (task_id, attempt) REFERENCES attempts (task_id, attempt)
) STRICT, WITHOUT ROWID;
