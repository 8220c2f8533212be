-- no-transaction
-- Deleting a message erases its content from its earlier events (message,
-- edits), found by (room_id, message_seq). Built concurrently so writers are
-- not blocked on a large table (hence no transaction). Expand-only.
CREATE INDEX CONCURRENTLY IF NOT EXISTS room_events_by_message
    ON room_events (room_id, message_seq) WHERE message_seq IS NOT NULL;
