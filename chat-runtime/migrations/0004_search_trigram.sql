-- Search in scripts written without spaces (Chinese, Japanese, Thai) and in
-- words with particles attached (Korean): the 'simple' text-search parser
-- takes a whole run of such text as one word, so `上海` never matched
-- `我家在上海东边。`. The runtime now matches such terms as substrings
-- (ILIKE), which a trigram index (pg_trgm) can serve.
--
-- pg_trgm is a contrib extension, "trusted" since PostgreSQL 13: the
-- database owner may create it. Where it cannot be created (older server,
-- no CREATE privilege on the database, contrib not installed) the migration
-- still succeeds and search falls back to scanning the caller's rooms. The
-- index itself is built by the runtime after start-up, CONCURRENTLY (which a
-- migration cannot do conditionally), so writers are never blocked.
-- Expand-only: nothing an older runtime uses changes.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm not available (%): search uses substring scans without an index', SQLERRM;
END
$$;
