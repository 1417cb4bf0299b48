-- Issue 14: the configuration database install profiles are rendered from
-- (docs/provisioning.md, "Profiles and attributes"). Keep in step with
-- ../postgres/0004_profiles.sql: same tables, same columns.
--
-- Roles and profiles are global. Groups belong to a cluster. Attributes sit at one of
-- five scopes, one table per scope, each row keyed by its scope's row (scope_id; 0 for
-- global), so that deleting a site, cluster, group or node takes its attributes along.
-- A role's packages and files are JSON text (a list of templates; a list of
-- {path, mode, content}).

CREATE TABLE roles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    packages TEXT NOT NULL,
    files TEXT NOT NULL,
    post TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- A profile's roles in application order.
CREATE TABLE profile_roles (
    profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    role_id INTEGER NOT NULL REFERENCES roles(id),
    PRIMARY KEY (profile_id, pos)
);

ALTER TABLE clusters ADD COLUMN profile_id INTEGER REFERENCES profiles(id);

CREATE TABLE node_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (cluster_id, name)
);

CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, node_id)
);

CREATE TABLE group_roles (
    group_id INTEGER NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    role_id INTEGER NOT NULL REFERENCES roles(id),
    PRIMARY KEY (group_id, pos)
);

CREATE TABLE node_roles (
    node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    pos INTEGER NOT NULL,
    role_id INTEGER NOT NULL REFERENCES roles(id),
    PRIMARY KEY (node_id, pos)
);

CREATE TABLE global_attributes (
    scope_id INTEGER NOT NULL DEFAULT 0 CHECK (scope_id = 0),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE site_attributes (
    scope_id INTEGER NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE cluster_attributes (
    scope_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE group_attributes (
    scope_id INTEGER NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE node_attributes (
    scope_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope_id, name)
);
