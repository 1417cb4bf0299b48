-- Issue 14: BIOS or UEFI firmware for a cluster's VMs (docs/provisioning.md, "UEFI").
-- Keep in step with the other backend's 0006_firmware.sql. The cluster's default, and each
-- node's own (nodes added later may differ).
ALTER TABLE clusters ADD COLUMN node_firmware TEXT NOT NULL DEFAULT 'bios';
ALTER TABLE nodes ADD COLUMN firmware TEXT NOT NULL DEFAULT 'bios';
