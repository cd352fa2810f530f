-- embark broker schema: the sync manifest a task carries and the blobs it names (D22).
--
-- tasks.manifest: the task's manifest as the wire has it (JSON text); NULL for
-- a task of a commit alone. blobs: content-addressed, keyed by the blake3
-- hash of their bytes, written once (a repeated upload changes nothing) and
-- checked against the hash before they are stored.
ALTER TABLE tasks ADD COLUMN manifest TEXT;

CREATE TABLE blobs (
    hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
