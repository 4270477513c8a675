-- 2: lifecycle state last reached (one writer wins; replaced by per-host rows in 3), host-wide settings
ALTER TABLE tenant_plugins ADD COLUMN state TEXT NOT NULL DEFAULT 'inactive';
ALTER TABLE tenant_plugins ADD COLUMN reason TEXT;
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
