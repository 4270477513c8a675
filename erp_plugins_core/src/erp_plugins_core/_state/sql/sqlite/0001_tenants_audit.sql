-- 1: tenants' plugin records and the audit trail
CREATE TABLE tenant_plugins (
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    trusted INTEGER NOT NULL,
    granted TEXT NOT NULL,
    priority INTEGER NOT NULL,
    config TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, plugin)
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    tenant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_tenant ON audit (tenant, id);
