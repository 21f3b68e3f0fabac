-- Tandem message store, schema version 3: what the IP channel needs to survive a restart.

-- Contacts' presence as the relay last told it: the founding method's presence store
-- (claim 4). Kept across restarts, but the daemon treats it as stale (offline for the
-- channel rule) until the relay refreshes it after a login.
--   state: 0 offline, 1 online, 2 typing
CREATE TABLE presence (
    number     TEXT    PRIMARY KEY,
    registered INTEGER NOT NULL CHECK (registered IN (0, 1)),
    state      INTEGER NOT NULL CHECK (state BETWEEN 0 AND 2),
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Numbers whose presence is followed besides the conversation peers (Watch).
CREATE TABLE watched (
    number TEXT PRIMARY KEY
) WITHOUT ROWID;

-- IP messages the relay delivered to us, stored but not yet confirmed (protocol §8):
-- hidden until the relay's `confirm` says delivered, then moved into `messages` in one
-- transaction; dropped when it says revoked. After a restart they are acked again.
CREATE TABLE ip_inbox (
    sender TEXT    NOT NULL,
    id     TEXT    NOT NULL,
    body   TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    PRIMARY KEY (sender, id)
) WITHOUT ROWID;

-- Outgoing messages on their way through the relay:
--   relay_stage: NULL not on the relay; 0 sent, no answer yet; 1 accepted, waiting for
--                the receipt; 2 revoking (no receipt in time, waiting for the answer)
--   deadline_ms: when stage 1 gives up waiting for the receipt (NULL: it waits, as for
--                a message that must go by IP)
ALTER TABLE messages ADD COLUMN relay_stage INTEGER CHECK (relay_stage BETWEEN 0 AND 2);
ALTER TABLE messages ADD COLUMN deadline_ms INTEGER;
-- Holds only the few messages on their way through the relay.
CREATE INDEX messages_on_relay ON messages (relay_stage) WHERE relay_stage IS NOT NULL;
