//! Size limits shared by every side of the wire. Inputs past them are refused
//! with a typed error instead of being truncated.

/// Longest prompt a task may carry, in bytes.
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;
/// Longest repository URL, in bytes.
pub const MAX_REPO_URL_BYTES: usize = 2048;
/// Longest client session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;
/// Longest runner name, in bytes.
pub const MAX_RUNNER_NAME_BYTES: usize = 128;
/// Most events one append request may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 500;
/// Longest batch id of an event append, in bytes.
pub const MAX_BATCH_ID_BYTES: usize = 64;
/// Longest `client_request_id` of a task create.
pub const MAX_CLIENT_REQUEST_ID_BYTES: usize = 64;
/// Longest event kind name, in bytes.
pub const MAX_EVENT_KIND_BYTES: usize = 64;
/// Largest serialized payload of one event, in bytes.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 256 * 1024;
/// Longest final assistant text or failure reason a completion may carry, in bytes.
pub const MAX_RESULT_TEXT_BYTES: usize = 1024 * 1024;
/// Most events one read returns.
pub const MAX_EVENTS_PER_PAGE: u32 = 1000;
/// Most tasks one session listing returns (newest first).
pub const MAX_TASKS_PER_LIST: u32 = 1000;
/// Longest a claim long-poll may wait, in milliseconds.
pub const MAX_CLAIM_WAIT_MS: u64 = 30_000;
/// Largest request body the broker reads, in bytes; batch event appends below it.
pub const MAX_REQUEST_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Longest request URI (path and query) the broker reads, in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (request line and headers) the broker reads, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 100;
/// Largest blob (an overlay file, a symlink target, a bundle) the broker stores, in bytes.
/// Below [`MAX_REQUEST_BODY_BYTES`], so one `PUT` carries any blob.
pub const MAX_BLOB_BYTES: usize = 4 * 1024 * 1024;
/// Most repository URLs a claim may name, or a peek may exclude.
pub const MAX_REPOS_PER_FILTER: usize = 64;
/// Most repositories a peek answers with.
pub const MAX_REPOS_PER_PEEK: usize = 16;
/// Most hashes one `POST /v1/blobs/missing` may ask about.
pub const MAX_BLOBS_PER_QUERY: usize = 10_000;
/// Most overlay entries a task's manifest may carry.
pub const MAX_MANIFEST_ENTRIES: usize = 10_000;
