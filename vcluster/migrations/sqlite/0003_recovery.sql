-- Issue 15: each cluster's recovery policy for nodes that go down
-- (off, restart, restart-then-reinstall).
ALTER TABLE clusters ADD COLUMN recovery TEXT NOT NULL DEFAULT 'restart';
