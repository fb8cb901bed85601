-- INSERT/UPDATE/DELETE with RETURNING through the extended protocol.
--- setup
CREATE TABLE t (id int PRIMARY KEY, v text);
--- extended params=1|a
INSERT INTO t VALUES ($1, $2) RETURNING *
--- extended params=b|1
UPDATE t SET v = $1 WHERE id = $2 RETURNING v
--- extended params=1
DELETE FROM t WHERE id = $1
