-- Tandem message store, schema version 4: sending an SMS exactly once across crashes.
--
-- An SMS is sent in two steps: ModemManager creates an SMS object for it, the daemon
-- records that object here (a durable commit, in the same transaction as the `sending`
-- status), and only then calls Sms.Send. A row here therefore means "Send may have been
-- called": after a crash the daemon asks the object what became of it (`sent`, or still
-- unsent once ModemManager's own time for the send has passed) instead of sending the
-- text again. The row goes when the attempt ends (sent, requeued, failed) or with its
-- message.
CREATE TABLE sms_attempt (
    msg       INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
    -- The unique bus name (":1.42") of the ModemManager instance that made the object:
    -- a restarted ModemManager reuses paths for other SMS.
    owner     TEXT    NOT NULL,
    -- The modem and the SMS object paths.
    modem     TEXT    NOT NULL,
    path      TEXT    NOT NULL,
    -- When the object was recorded (ms since the epoch), and how long ModemManager may
    -- take to send all its parts: the send has settled by since_ms + budget_ms.
    since_ms  INTEGER NOT NULL,
    budget_ms INTEGER NOT NULL
);

-- SMS objects of ours to remove from the modem (sent, or given up), kept until
-- ModemManager confirms the removal: an attempt's record moves here in the transaction
-- that stores its outcome, so a crash between the two steps neither loses the outcome nor
-- leaves the object on the modem for ever.
CREATE TABLE sms_cleanup (
    owner TEXT NOT NULL,
    modem TEXT NOT NULL,
    path  TEXT NOT NULL,
    PRIMARY KEY (owner, path)
) WITHOUT ROWID;

-- How often the daemon met a case the reliability rules count (docs/reliability.md),
-- e.g. "sms-outcome-unknown": an SMS whose fate ModemManager could not tell.
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
