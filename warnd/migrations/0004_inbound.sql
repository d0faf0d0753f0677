-- warnd schema 4: replies people send back (SMS) — confirmations and free text for the operator.

CREATE TABLE inbound (
    id            INTEGER PRIMARY KEY,
    provider_ref  TEXT UNIQUE,              -- Twilio MessageSid: a replayed webhook or poll is stored once
    channel       TEXT NOT NULL,            -- sms
    phone         TEXT NOT NULL,            -- the sender, E.164 when it could be normalized
    person_id     TEXT,                     -- who that is, from the delivery it was matched to
    warning_id    TEXT,                     -- the warning of that person's most recent delivery
    delivery_id   INTEGER,                  -- the delivery it acknowledged (ack replies only)
    body          TEXT NOT NULL,
    is_ack        INTEGER NOT NULL DEFAULT 0,
    answered      INTEGER NOT NULL DEFAULT 0,   -- warnd answered it automatically (once per person and warning)
    received_at   TEXT NOT NULL
);
CREATE INDEX inbound_warning ON inbound (warning_id, id);
CREATE INDEX inbound_phone ON inbound (phone, warning_id);
CREATE INDEX deliveries_address ON deliveries (address, sent_at) WHERE address IS NOT NULL;
