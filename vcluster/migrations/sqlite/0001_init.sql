-- vcluster controller store, SQLite. Times are Unix milliseconds (UTC).
-- Keep in step with ../postgres/0001_init.sql: same tables, same columns.

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user', 'agent')),
    created_at INTEGER NOT NULL
);

CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE sites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    site_id INTEGER NOT NULL REFERENCES sites(id),
    agent_user_id INTEGER NOT NULL REFERENCES users(id),
    cpus INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib INTEGER NOT NULL CHECK (memory_mib > 0),
    agent_url TEXT NOT NULL,
    agent_secret TEXT NOT NULL,
    overlay_endpoint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    driver TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    registered_at INTEGER NOT NULL,
    last_seen INTEGER
);

CREATE TABLE reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    site_id INTEGER NOT NULL REFERENCES sites(id),
    nodes INTEGER,
    cpus INTEGER NOT NULL CHECK (cpus >= 0),
    memory_mib INTEGER NOT NULL CHECK (memory_mib >= 0),
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL CHECK (ends_at > starts_at),
    state TEXT NOT NULL CHECK (state IN ('accepted', 'cancelled', 'expired')),
    note TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
CREATE INDEX reservations_site_time ON reservations (site_id, state, ends_at);

CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    network_id INTEGER NOT NULL UNIQUE,
    psk TEXT NOT NULL,
    subnet TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'expired', 'deleting', 'failed')),
    overlay TEXT NOT NULL CHECK (overlay IN ('running', 'stopped')),
    reason TEXT,
    reservation_id INTEGER REFERENCES reservations(id),
    node_cpus INTEGER NOT NULL,
    node_memory_mib INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    mac TEXT NOT NULL,
    address TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    state TEXT NOT NULL,
    target TEXT NOT NULL CHECK (target IN ('running', 'stopped', 'deleted')),
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (cluster_id, idx)
);
CREATE INDEX nodes_host ON nodes (host_id);

CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    cluster_name TEXT,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    message TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    deadline INTEGER NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    cluster_name TEXT,
    owner_id INTEGER,
    task_id INTEGER,
    message TEXT NOT NULL
);
CREATE INDEX events_cluster ON events (cluster_name, id);

CREATE TABLE usage_samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    at INTEGER NOT NULL,
    capacity_cpus INTEGER NOT NULL,
    capacity_memory_mib INTEGER NOT NULL,
    used_cpus INTEGER NOT NULL,
    used_memory_mib INTEGER NOT NULL,
    reserved_cpus INTEGER NOT NULL,
    reserved_memory_mib INTEGER NOT NULL
);
CREATE INDEX usage_samples_site_at ON usage_samples (site_id, at);

-- Monotonic counters: 'revision' (bumped by every change to any host's desired state)
-- and 'network_id' (the last overlay network id handed out; never reused).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('revision', 0), ('network_id', 0);
