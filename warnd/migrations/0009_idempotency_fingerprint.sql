-- warnd schema 9: what an Idempotency-Key was first used for. A retry with the same key and the
-- same warning is a replay (200, the first id); the same key with another warning is refused
-- (422) instead of silently dropping the second warning. sha256 hex of the canonical warning
-- (warnd.model.fingerprint); NULL on rows from before this migration, which replay as before.
ALTER TABLE warnings ADD COLUMN idempotency_fingerprint TEXT;
