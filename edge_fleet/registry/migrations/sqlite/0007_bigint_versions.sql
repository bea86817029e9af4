-- Model versions as 64-bit integers: SQLite's INTEGER already holds them; PostgreSQL's columns become BIGINT
-- in its 0007 (the engines keep one schema version).
SELECT 1;
