-- warnd schema 10: a send a crash left in doubt is looked up at the provider before it is repeated.
-- claimed_at: when the delivery was last handed to its adapter.
-- maybe_sent_at: a crash left the delivery `sending`, so its send may have reached the provider at
-- or after this time (the claim's); NULL when no send of it is in doubt. Set by recover(), cleared
-- when a send or a lookup succeeds.
ALTER TABLE deliveries ADD COLUMN claimed_at TEXT;
ALTER TABLE deliveries ADD COLUMN maybe_sent_at TEXT;
