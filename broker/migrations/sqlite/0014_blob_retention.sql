-- embark broker schema: sync blobs are deleted once nothing needs them (D33).
--
-- blobs.kind: 'sync' (a client's upload for a manifest: the blob sweep
-- deletes it once it was last needed more than the blob retention ago and no
-- unfinished task, nor one whose artifacts are kept, names it), 'artifact'
-- (an attempt's upload: the artifact sweep's), 'kept' (stored before kinds
-- existed: left to the artifact sweep, as before).
-- blobs.last_needed_at: the last upload of the blob, or creation of a task
-- naming it, in ms.
ALTER TABLE blobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'kept';
ALTER TABLE blobs ADD COLUMN last_needed_at INTEGER NOT NULL DEFAULT 0;
CREATE INDEX blobs_by_need ON blobs (kind, last_needed_at);
-- The sweep reads the manifests of the old tasks whose artifacts are kept.
CREATE INDEX tasks_with_artifacts ON tasks (created_at) WHERE artifacts IS NOT NULL;
