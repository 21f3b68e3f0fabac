-- Tandem message store, schema version 2: remember which incoming messages were
-- announced (MessageReceived and a notification).
--
-- An incoming message is stored with announced = 0 and marked 1 once it has been
-- announced, so one stored just before a crash is announced at the next start instead of
-- never. Rows from before this migration, and outgoing messages, count as announced.
ALTER TABLE messages ADD COLUMN announced INTEGER NOT NULL DEFAULT 1 CHECK (announced IN (0, 1));
-- Holds only the few messages between storing and announcing.
CREATE INDEX messages_unannounced ON messages (announced) WHERE announced = 0;
