-- 4: one row every change writer updates first (PostgreSQL: a SERIALIZABLE writer whose snapshot predates
-- another writer's commit fails to update it, and is retried, instead of acting on what it read)
CREATE TABLE change_clock (n BIGINT NOT NULL);
INSERT INTO change_clock (n) VALUES (0);
