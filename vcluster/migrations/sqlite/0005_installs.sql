-- Issue 14: each provisioned node's install (docs/provisioning.md, "States"). Keep in step
-- with the other backend's 0005_installs.sql. One row per node while it has an install:
-- its state, the phase's start (for the per-phase timeout), progress (the installer's step,
-- packages, bytes), the failure reason,
-- and the install's one-time token (it authenticates the installer's and the installed
-- system's callbacks for this install only; a reinstall makes a new one).
CREATE TABLE installs (
    node_id INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    packages_done INTEGER,
    packages_total INTEGER,
    bytes INTEGER,
    step TEXT,
    reason TEXT,
    started_at INTEGER NOT NULL,
    phase_started_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The host that runs a provisioned cluster's frontend (DHCP, PXE, install reports): the
-- one at the site asked for at create (`frontend_site`), else none here and the host of
-- the cluster's lowest-index node.
ALTER TABLE clusters ADD COLUMN frontend_host_id INTEGER REFERENCES hosts(id);
