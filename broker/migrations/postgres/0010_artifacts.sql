-- embark broker schema: what a task's code became and the blobs it left (D26).
--
-- tasks.changes: the verdict's Changes (base and result commit, counts, the
-- result bundle's hash), JSON text; NULL when the runner recorded none.
-- tasks.artifacts: the verdict's artifacts (kind, hash, size), a JSON array;
-- each hash is a row of blobs, uploaded by the attempt before its verdict.
ALTER TABLE tasks ADD COLUMN changes TEXT;
ALTER TABLE tasks ADD COLUMN artifacts TEXT;
