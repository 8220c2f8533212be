-- The write path without per-row foreign-key checks. Each stored message ran
-- three referential-integrity triggers (messages -> rooms, messages -> users,
-- room_events -> rooms), each a locking lookup; the `rooms` row is rewritten
-- by every commit (`last_seq`), so the lookups walked its fresh versions. In a
-- profile of the durable throughput benchmark (100 rooms, group commit) they
-- took about a third of PostgreSQL's CPU.
--
-- What the constraints guaranteed still holds, by the write path itself:
-- every insert into `messages` and `room_events` happens in a transaction
-- that first locks the room's row (`SELECT ... FOR UPDATE` or `UPDATE rooms
-- SET last_seq ...`), so the room exists and cannot go away before the
-- commit; a message's sender passed the membership check (`room_members`,
-- which keeps its foreign key to `users`) in the same transaction. No code
-- deletes rooms or users, so the cascades never fired; deleting a room by
-- hand now means deleting its messages and events first (docs/runtime.md,
-- "Schema").
--
-- Contract-only and safe during a rollout: the previous runtime never relied
-- on the constraints to refuse anything (it checks rooms and membership
-- first) and writes the same rows.
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_room_id_fkey;
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_sender_id_fkey;
ALTER TABLE room_events DROP CONSTRAINT IF EXISTS room_events_room_id_fkey;
