-- migrate:up

-- Free-text ListEvents pages: the trigram GIN index (events_listed_text) can only return every match, which
-- are then sorted by start time for one page, so a page costs more as the catalogue grows. This index holds
-- the same text with the start time, so a nearest-neighbour walk from the listing's start (ORDER BY
-- start_time <-> anchor) reads matches in start-time order and stops after a page (see build_list_sql in
-- services/event/repository.py). btree_gist provides the start-time column's GiST operator class.
-- The text is "C"-collated (LIKE matches the same either way) so that only the ordered walk uses this index:
-- without a start-time order to follow, a scan of it would read every entry in the range.
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX events_listed_text_by_start ON event.events
    USING gist (start_time, (lower(title || ' ' || film_title) COLLATE "C") gist_trgm_ops (siglen = 16))
    WHERE visibility = 'PUBLIC' AND state = 'SCHEDULED';

-- migrate:down
DROP INDEX event.events_listed_text_by_start;
