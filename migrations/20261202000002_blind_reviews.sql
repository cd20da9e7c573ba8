-- migrate:up

-- Blind two-way reviews: a review is written PENDING (reveal_time NULL) and
-- counts nowhere until it is revealed, together with its counterpart (the
-- other person's review of the author for the same event) or when the review
-- window closes (reveal_due = the event's complete_time + the window, fixed
-- when the review is written). Reviews written before this migration were
-- already visible and counted: they are revealed as of their creation.
ALTER TABLE review.reviews
    ADD COLUMN reveal_due  timestamptz,
    ADD COLUMN reveal_time timestamptz;
UPDATE review.reviews SET reveal_due = create_time, reveal_time = create_time;
ALTER TABLE review.reviews ALTER COLUMN reveal_due SET NOT NULL;

-- The worker's reveal job: pending reviews by due time.
CREATE INDEX reviews_pending_by_due ON review.reviews (reveal_due) WHERE reveal_time IS NULL;

-- migrate:down
DROP INDEX review.reviews_pending_by_due;
ALTER TABLE review.reviews DROP COLUMN reveal_time, DROP COLUMN reveal_due;
