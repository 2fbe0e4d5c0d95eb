-- Progressive jackpots (DESIGN section 10). Money: contributions in micro units (millionths of
-- the minor unit, columns *_micro); seeds, caps, hit values and awards in minor units.
-- Every row is written by the sink from the Jackpot Service's events (idempotent on its key);
-- corrections are new rows (jackpot_compensation), never edits of an award.

CREATE TABLE jackpot (
  jackpot_id      VARCHAR(64)  NOT NULL PRIMARY KEY,
  tier            VARCHAR(8)   NOT NULL,
  currency        CHAR(3)      NOT NULL,
  trigger_kind    VARCHAR(16)  NOT NULL,
  channel_id      VARCHAR(64)  NOT NULL,
  operator_group  VARCHAR(64)  NOT NULL,
  definition      JSON         NOT NULL,
  pending         JSON         NULL,
  status          VARCHAR(8)   NOT NULL,
  version         INT          NOT NULL,
  created_at      BIGINT       NOT NULL,
  updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB;

-- One row per cycle: its seed (injected once, at the cycle's start), the money it started with
-- and the commitment; hit_value and nonce are filled in when the hit reveals them.
CREATE TABLE jackpot_cycle (
  jackpot_id   VARCHAR(64)  NOT NULL,
  cycle        INT          NOT NULL,
  seed         BIGINT       NOT NULL,
  start_micro  BIGINT       NOT NULL,
  commitment   CHAR(64)     NOT NULL,
  definition   JSON         NOT NULL,
  started_at   BIGINT       NOT NULL,
  award_id     VARCHAR(96)  NULL,
  hit_value    BIGINT       NULL,
  nonce        CHAR(32)     NULL,
  ended_at     BIGINT       NULL,
  PRIMARY KEY (jackpot_id, cycle)
) ENGINE=InnoDB;

-- The seed's table [id, jackpot_id, game_id, amount, timestamp], one row per contribution:
-- game_id is the channel for a bet's contribution, the REST caller's gameId otherwise.
CREATE TABLE jackpot_contributions (
  id                BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  jackpot_id        VARCHAR(64)  NOT NULL,
  contribution_key  VARCHAR(128) NOT NULL,
  source            VARCHAR(8)   NOT NULL,
  game_id           VARCHAR(64)  NOT NULL,
  user_id           VARCHAR(64)  NOT NULL,
  bet_id            VARCHAR(64)  NULL,
  term_id           VARCHAR(96)  NULL,
  cycle             INT          NOT NULL,
  amount_micro      BIGINT       NOT NULL,
  currency          CHAR(3)      NOT NULL,
  ts                BIGINT       NOT NULL,
  UNIQUE KEY uq_contribution (jackpot_id, contribution_key),
  KEY ix_contribution_game (game_id, ts),
  KEY ix_contribution_jackpot (jackpot_id, ts)
) ENGINE=InnoDB;

-- One row per hit: the locked-in amount (awarded_amount), what it revealed.
CREATE TABLE jackpot_award (
  award_id        VARCHAR(96)  NOT NULL PRIMARY KEY,
  jackpot_id      VARCHAR(64)  NOT NULL,
  cycle           INT          NOT NULL,
  trigger_kind    VARCHAR(16)  NOT NULL,
  amount          BIGINT       NOT NULL,
  currency        CHAR(3)      NOT NULL,
  overflow_micro  BIGINT       NOT NULL,
  hit_value       BIGINT       NULL,
  nonce           CHAR(32)     NULL,
  commitment      CHAR(64)     NULL,
  ranked          TINYINT(1)   NOT NULL DEFAULT 0,
  channel_id      VARCHAR(64)  NOT NULL,
  term_id         VARCHAR(96)  NOT NULL,
  bet_id          VARCHAR(64)  NOT NULL,
  user_id         VARCHAR(64)  NOT NULL,
  ts              BIGINT       NOT NULL,
  KEY ix_award_jackpot (jackpot_id, ts)
) ENGINE=InnoDB;

-- One row per winner (rank) of an award, written in the same transaction as its payout_outbox row.
CREATE TABLE jackpot_award_winner (
  award_id       VARCHAR(96)  NOT NULL,
  rank_no        INT          NOT NULL,
  jackpot_id     VARCHAR(64)  NOT NULL,
  user_id        VARCHAR(64)  NOT NULL,
  bet_id         VARCHAR(64)  NOT NULL,
  term_id        VARCHAR(96)  NOT NULL,
  channel_id     VARCHAR(64)  NOT NULL,
  currency       CHAR(3)      NOT NULL,
  bonus_amount   BIGINT       NOT NULL,
  multiple_x100  INT          NOT NULL,
  order_no       VARCHAR(128) NOT NULL,
  ts             BIGINT       NOT NULL,
  PRIMARY KEY (award_id, rank_no),
  UNIQUE KEY uq_winner_order (order_no)
) ENGINE=InnoDB;

-- Audit-mode rollback of an award: a compensating entry (the amount back into the pool).
-- requested by the API (with the payouts cancelled), applied when the pool's event is written.
CREATE TABLE jackpot_compensation (
  award_id      VARCHAR(96)  NOT NULL PRIMARY KEY,
  jackpot_id    VARCHAR(64)  NOT NULL,
  amount        BIGINT       NOT NULL,
  operator      VARCHAR(64)  NOT NULL,
  reason        VARCHAR(255) NOT NULL,
  state         VARCHAR(12)  NOT NULL,
  requested_at  BIGINT       NOT NULL,
  applied_at    BIGINT       NULL
) ENGINE=InnoDB;

-- Reconciliation runs: MySQL's sums against the live pool at one point of its stream.
CREATE TABLE jackpot_reconciliation (
  id                   BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  jackpot_id           VARCHAR(64)  NOT NULL,
  request_id           VARCHAR(96)  NOT NULL,
  seeds                BIGINT       NOT NULL,
  contributions_micro  BIGINT       NOT NULL,
  awards               BIGINT       NOT NULL,
  compensations        BIGINT       NOT NULL,
  expected_micro       BIGINT       NOT NULL,
  pool_micro           BIGINT       NOT NULL,
  difference_micro     BIGINT       NOT NULL,
  ts                   BIGINT       NOT NULL,
  UNIQUE KEY uq_reconciliation (jackpot_id, request_id),
  KEY ix_reconciliation_ts (ts)
) ENGINE=InnoDB;

-- Near-cap notices to deliver to the webhook (an outbox: at least once, idempotent by notice_id).
CREATE TABLE jackpot_notice (
  notice_id    VARCHAR(96)  NOT NULL PRIMARY KEY,
  jackpot_id   VARCHAR(64)  NOT NULL,
  payload      JSON         NOT NULL,
  status       VARCHAR(12)  NOT NULL,
  retry_count  INT          NOT NULL DEFAULT 0,
  next_at      BIGINT       NOT NULL,
  leased_until BIGINT       NULL,
  last_error   VARCHAR(512) NULL,
  created_at   BIGINT       NOT NULL,
  updated_at   BIGINT       NOT NULL,
  KEY ix_notice_ready (status, next_at)
) ENGINE=InnoDB;

-- An award's payout cancelled by a rollback is `cancelled` (9 letters).
ALTER TABLE payout_outbox MODIFY status VARCHAR(16) NOT NULL DEFAULT 'ready';
