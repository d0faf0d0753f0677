-- warnd schema 11: which provider sent a person's SMS or call (twilio, aliyun, tencent), when a
-- channel has several in fallback order (issue 16). NULL for device channels and older rows.
ALTER TABLE deliveries ADD COLUMN provider TEXT;
CREATE INDEX IF NOT EXISTS deliveries_provider_sent ON deliveries (provider, address, sent_at);
