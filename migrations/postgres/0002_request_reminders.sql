-- Per-rule reminder and escalation timings; NULL falls back to the global [reminders] plan.
ALTER TABLE requests ADD COLUMN remind_after_secs BIGINT;
ALTER TABLE requests ADD COLUMN escalate_after_secs BIGINT;
ALTER TABLE requests ADD COLUMN escalate_to_json TEXT;
