-- Tandem message store, schema version 1.
--
-- Applied by src/store/mod.rs in one transaction, which then sets PRAGMA user_version = 1.
-- Never edit a migration that has shipped: add 0002_*.sql instead.
--
-- Size matters (a phone with a million messages), so enums are small integers, ids are
-- 16-byte BLOBs, peers are stored once in `conversations`, idempotency keys are stored as
-- digests, rowids are dense, and no index is covered by another one.
--
-- Integer codes (kept in sync with src/store/codec.rs):
--   status:    0 queued, 1 sending, 2 sent, 3 delivered, 4 failed, 5 received
--   channel:   NULL not handed to a channel yet, 0 sms, 1 ip
--   requested: 0 auto, 1 sms, 2 ip

-- One row per peer that has at least one message, maintained in the same transactions
-- as `messages`, so the conversation list and the unread counts never scan messages.
CREATE TABLE conversations (
    id       INTEGER PRIMARY KEY,
    -- E.164, or a short code / alphanumeric sender kept verbatim.
    peer     TEXT    NOT NULL UNIQUE,
    -- The newest message (the last to arrive): its seq and timestamp.
    last_seq INTEGER NOT NULL,
    last_ts  INTEGER NOT NULL,
    -- Incoming messages with read = 0.
    unread   INTEGER NOT NULL DEFAULT 0 CHECK (unread >= 0)
);
-- The conversation list, newest activity (arrival) first.
CREATE INDEX conversations_by_activity ON conversations (last_seq);
-- UnreadCount sums only the conversations that have unread messages.
CREATE INDEX conversations_unread ON conversations (unread) WHERE unread > 0;

CREATE TABLE messages (
    -- Arrival order (the rowid). Messages are ordered by it: "newest" is the last stored.
    seq             INTEGER PRIMARY KEY,
    -- The API id: a UUID, stored as its 16 bytes.
    uuid            BLOB    NOT NULL UNIQUE CHECK (length(uuid) = 16),
    conv            INTEGER NOT NULL REFERENCES conversations (id),
    outgoing        INTEGER NOT NULL CHECK (outgoing IN (0, 1)),
    status          INTEGER NOT NULL CHECK (status BETWEEN 0 AND 5),
    channel         INTEGER CHECK (channel IN (0, 1)),
    -- Milliseconds since the Unix epoch: outgoing, when SendMessage accepted it;
    -- incoming, the sender's or SMS centre's time.
    timestamp_ms    INTEGER NOT NULL,
    read            INTEGER NOT NULL CHECK (read IN (0, 1)),
    body            TEXT    NOT NULL,
    -- Incoming only: digest of the caller's idempotency key (NULL for outgoing).
    dedupe_hash     BLOB,
    -- Outgoing only (NULL for incoming): SendMessage's client-token digest, when given.
    token_hash      BLOB,
    requested       INTEGER CHECK (requested BETWEEN 0 AND 2),
    delivery_report INTEGER CHECK (delivery_report IN (0, 1)),
    attempts        INTEGER,
    -- NULL: due now.
    next_attempt_ms INTEGER,
    -- The SMS message reference the SMS centre gave (0-255), for status reports.
    sms_ref         INTEGER,
    -- Why a failed message failed.
    error           TEXT
);
-- A conversation newest first (the index ends with the rowid, so it is ordered by
-- (conv, seq)): cursor paging, the last message, deleting a conversation.
CREATE INDEX messages_by_conv ON messages (conv);
CREATE UNIQUE INDEX messages_dedupe ON messages (dedupe_hash) WHERE dedupe_hash IS NOT NULL;
CREATE UNIQUE INDEX messages_token ON messages (token_hash) WHERE token_hash IS NOT NULL;
-- SMS status reports: Sent messages by peer and message reference, newest last.
-- Holds Sent messages only (the literal 2 must match the query's).
CREATE INDEX messages_sent_refs ON messages (conv, sms_ref) WHERE status = 2;
-- MarkRead without visiting read messages; holds unread messages only.
CREATE INDEX messages_unread ON messages (conv) WHERE read = 0;
-- The outbox, in acceptance (seq) order; holds pending outgoing messages only.
CREATE INDEX messages_outbox ON messages (outgoing) WHERE status IN (0, 1);

-- Full-text index over the bodies. External content (the text is stored once, in
-- messages), rowid = messages.seq: dense rowids keep its doclists small, and
-- `ORDER BY rowid DESC` walks it newest first.
-- columnsize=0: no per-row size table (we never rank by bm25).
-- detail=none: no positions (a third of the size); queries are AND-ed single tokens,
-- never phrases, which src/store/mod.rs guarantees by tokenizing them with this same
-- tokenizer (keep `tokenize` identical to QUERY_TOKENIZER there).
-- remove_diacritics 2: "cafe" finds "café".
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages',
    content_rowid = 'seq',
    columnsize = 0,
    detail = none,
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
END;
CREATE TRIGGER messages_fts_update AFTER UPDATE OF seq, body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.seq, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.seq, new.body);
END;
