-- vcluster controller store, PostgreSQL. Times are Unix milliseconds (UTC).
-- Keep in step with ../sqlite/0001_init.sql: same tables, same columns.

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user', 'agent')),
    created_at BIGINT NOT NULL
);

CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE sites (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    site_id BIGINT NOT NULL REFERENCES sites(id),
    agent_user_id BIGINT NOT NULL REFERENCES users(id),
    cpus BIGINT NOT NULL CHECK (cpus > 0),
    memory_mib BIGINT NOT NULL CHECK (memory_mib > 0),
    agent_url TEXT NOT NULL,
    agent_secret TEXT NOT NULL,
    overlay_endpoint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    driver TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    registered_at BIGINT NOT NULL,
    last_seen BIGINT
);

CREATE TABLE reservations (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    site_id BIGINT NOT NULL REFERENCES sites(id),
    nodes BIGINT,
    cpus BIGINT NOT NULL CHECK (cpus >= 0),
    memory_mib BIGINT NOT NULL CHECK (memory_mib >= 0),
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL CHECK (ends_at > starts_at),
    state TEXT NOT NULL CHECK (state IN ('accepted', 'cancelled', 'expired')),
    note TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX reservations_site_time ON reservations (site_id, state, ends_at);

CREATE TABLE clusters (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    network_id BIGINT NOT NULL UNIQUE,
    psk TEXT NOT NULL,
    subnet TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'expired', 'deleting', 'failed')),
    overlay TEXT NOT NULL CHECK (overlay IN ('running', 'stopped')),
    reason TEXT,
    reservation_id BIGINT REFERENCES reservations(id),
    node_cpus BIGINT NOT NULL,
    node_memory_mib BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE nodes (
    id BIGSERIAL PRIMARY KEY,
    cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL UNIQUE,
    host_id BIGINT NOT NULL REFERENCES hosts(id),
    mac TEXT NOT NULL,
    address TEXT NOT NULL,
    cpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    state TEXT NOT NULL,
    target TEXT NOT NULL CHECK (target IN ('running', 'stopped', 'deleted')),
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (cluster_id, idx)
);
CREATE INDEX nodes_host ON nodes (host_id);

CREATE TABLE tasks (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    owner_id BIGINT NOT NULL REFERENCES users(id),
    cluster_name TEXT,
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    message TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    deadline BIGINT NOT NULL
);

CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    cluster_name TEXT,
    owner_id BIGINT,
    task_id BIGINT,
    message TEXT NOT NULL
);
CREATE INDEX events_cluster ON events (cluster_name, id);

CREATE TABLE usage_samples (
    id BIGSERIAL PRIMARY KEY,
    site_id BIGINT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    capacity_cpus BIGINT NOT NULL,
    capacity_memory_mib BIGINT NOT NULL,
    used_cpus BIGINT NOT NULL,
    used_memory_mib BIGINT NOT NULL,
    reserved_cpus BIGINT NOT NULL,
    reserved_memory_mib BIGINT NOT NULL
);
CREATE INDEX usage_samples_site_at ON usage_samples (site_id, at);

-- Monotonic counters: 'revision' (bumped by every change to any host's desired state)
-- and 'network_id' (the last overlay network id handed out; never reused).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('revision', 0), ('network_id', 0);
