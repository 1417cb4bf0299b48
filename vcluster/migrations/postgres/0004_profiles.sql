-- Issue 14: the configuration database install profiles are rendered from
-- (docs/provisioning.md, "Profiles and attributes"). Keep in step with
-- ../sqlite/0004_profiles.sql: same tables, same columns.
--
-- Roles and profiles are global. Groups belong to a cluster. Attributes sit at one of
-- five scopes, one table per scope, each row keyed by its scope's row (scope_id; 0 for
-- global), so that deleting a site, cluster, group or node takes its attributes along.
-- A role's packages and files are JSON text (a list of templates; a list of
-- {path, mode, content}).

CREATE TABLE roles (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    packages TEXT NOT NULL,
    files TEXT NOT NULL,
    post TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE profiles (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A profile's roles in application order.
CREATE TABLE profile_roles (
    profile_id BIGINT NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
    pos BIGINT NOT NULL,
    role_id BIGINT NOT NULL REFERENCES roles(id),
    PRIMARY KEY (profile_id, pos)
);

ALTER TABLE clusters ADD COLUMN profile_id BIGINT REFERENCES profiles(id);

CREATE TABLE node_groups (
    id BIGSERIAL PRIMARY KEY,
    cluster_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (cluster_id, name)
);

CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    node_id BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, node_id)
);

CREATE TABLE group_roles (
    group_id BIGINT NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    pos BIGINT NOT NULL,
    role_id BIGINT NOT NULL REFERENCES roles(id),
    PRIMARY KEY (group_id, pos)
);

CREATE TABLE node_roles (
    node_id BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    pos BIGINT NOT NULL,
    role_id BIGINT NOT NULL REFERENCES roles(id),
    PRIMARY KEY (node_id, pos)
);

CREATE TABLE global_attributes (
    scope_id BIGINT NOT NULL DEFAULT 0 CHECK (scope_id = 0),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE site_attributes (
    scope_id BIGINT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE cluster_attributes (
    scope_id BIGINT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE group_attributes (
    scope_id BIGINT NOT NULL REFERENCES node_groups(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope_id, name)
);

CREATE TABLE node_attributes (
    scope_id BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope_id, name)
);
