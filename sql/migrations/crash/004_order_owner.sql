-- Who owns an api_order_no (DESIGN section 7: unique per operator). MariaDB is the authority,
-- not a cache: a claim survives every restart, and it is made before anything else happens to
-- the order (before the seamless debit, before the command reaches a topic). The first claim
-- fixes the channel and the mode; a reuse on another channel, or in the other mode (a seamless
-- debit on a number already decided in transfer mode), is refused before any money moves.
CREATE TABLE api_order (
  operator_group VARCHAR(64)  NOT NULL,
  api_order_no   VARCHAR(64)  NOT NULL,
  channel_id     VARCHAR(64)  NOT NULL,
  mode           VARCHAR(8)   NOT NULL,   -- transfer | seamless
  user_id        VARCHAR(64)  NOT NULL,
  claimed_at     BIGINT       NOT NULL,
  PRIMARY KEY (operator_group, api_order_no)
) ENGINE=InnoDB;

-- The debit resolver works each row on its own schedule: a row it cannot finish backs off
-- (next_at) or, when the wallet refuses the request as such, stops as `stuck` with the reason,
-- instead of blocking the rows behind it.
ALTER TABLE player_debit
  ADD COLUMN attempts   INT          NOT NULL DEFAULT 0,
  ADD COLUMN next_at    BIGINT       NOT NULL DEFAULT 0,
  ADD COLUMN last_error VARCHAR(255) NULL,
  ADD KEY ix_player_debit_due (state, next_at);
