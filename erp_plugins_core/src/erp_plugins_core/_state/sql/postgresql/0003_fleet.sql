-- 3: per-host runtime rows, live hosts, the change feed, API tokens
CREATE TABLE hosts (
    host TEXT PRIMARY KEY,
    heartbeat DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION NOT NULL
);
CREATE TABLE runtime (
    host TEXT NOT NULL,
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (host, tenant, plugin)
);
CREATE INDEX runtime_tenant_plugin ON runtime (tenant, plugin, updated_at);
-- the one state each record held becomes a runtime row of the host 'migrated', which expires like a gone host
INSERT INTO runtime (host, tenant, plugin, state, reason, updated_at)
    SELECT 'migrated', tenant, plugin, state, reason, updated_at FROM tenant_plugins
    WHERE state <> 'inactive' OR reason IS NOT NULL;
INSERT INTO hosts (host, heartbeat, started)
    SELECT 'migrated', m.t, m.t FROM (SELECT MAX(updated_at) AS t FROM runtime WHERE host = 'migrated') AS m
    WHERE m.t IS NOT NULL;
ALTER TABLE tenant_plugins DROP COLUMN state;
ALTER TABLE tenant_plugins DROP COLUMN reason;
CREATE TABLE changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant TEXT,
    plugin TEXT,
    kind TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL
);
CREATE TABLE changes_pruned (through_seq BIGINT NOT NULL);
INSERT INTO changes_pruned (through_seq) VALUES (0);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    tenant TEXT,
    scope TEXT NOT NULL,
    digest TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION,
    last_used DOUBLE PRECISION,
    revoked BOOLEAN NOT NULL,
    label TEXT NOT NULL
);
CREATE INDEX tokens_tenant ON tokens (tenant, created);
