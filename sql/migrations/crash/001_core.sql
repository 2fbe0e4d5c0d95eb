-- Core reporting schema of the crash game (DESIGN sections 7, 9). Times are unix ms (UTC),
-- money is integer minor units, multiples are integer hundredths.

CREATE TABLE channel (
  channel_id      VARCHAR(64)  NOT NULL PRIMARY KEY,
  operator_group  VARCHAR(64)  NOT NULL,
  config          JSON         NOT NULL,
  config_version  INT          NOT NULL,
  created_at      BIGINT       NOT NULL,
  updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB;

-- The public half of each fairness chain: terminator h_0 and salt (lowercase hex).
-- The secret half lives in the crash_secret database, readable only by its own user.
CREATE TABLE fairness_chain (
  channel_id   VARCHAR(64) NOT NULL,
  chain_no     INT         NOT NULL,
  length       INT         NOT NULL,
  terminator   CHAR(64)    NOT NULL,
  salt         CHAR(64)    NOT NULL,
  published_at BIGINT      NOT NULL,
  PRIMARY KEY (channel_id, chain_no)
) ENGINE=InnoDB;

CREATE TABLE crash_term (
  term_id        VARCHAR(96)  NOT NULL PRIMARY KEY,
  channel_id     VARCHAR(64)  NOT NULL,
  seq            BIGINT       NOT NULL,
  chain_no       INT          NOT NULL,
  chain_index    INT          NOT NULL,
  prev_hash      CHAR(64)     NOT NULL,
  state          VARCHAR(16)  NOT NULL,
  state_version  INT          NOT NULL,
  created_at     BIGINT       NOT NULL,
  bets_close_at  BIGINT       NOT NULL,
  flying_at      BIGINT       NOT NULL,
  crash_at       BIGINT       NULL,
  ended_at       BIGINT       NULL,
  closed_at      BIGINT       NULL,
  crash_x100     INT          NULL,
  revealed_hash  CHAR(64)     NULL,
  hmac_digest    CHAR(128)    NULL,
  aborted        TINYINT(1)   NOT NULL DEFAULT 0,
  abort_reason   VARCHAR(255) NULL,
  recovered      TINYINT(1)   NOT NULL DEFAULT 0,
  config         JSON         NOT NULL,
  updated_at     BIGINT       NOT NULL,
  UNIQUE KEY uq_term_seq (channel_id, seq),
  UNIQUE KEY uq_term_chain (channel_id, chain_no, chain_index),
  KEY ix_term_state (state, channel_id)
) ENGINE=InnoDB;

-- TermClosed totals, one row per currency; house_result = stakes - payouts - refunds.
CREATE TABLE crash_term_totals (
  term_id       VARCHAR(96) NOT NULL,
  currency      CHAR(3)     NOT NULL,
  bets          INT         NOT NULL,
  stakes        BIGINT      NOT NULL,
  payouts       BIGINT      NOT NULL,
  refunds       BIGINT      NOT NULL,
  house_result  BIGINT      NOT NULL,
  PRIMARY KEY (term_id, currency)
) ENGINE=InnoDB;

-- Every domain event once (idempotent sink): the audit trail the reports rebuild from.
CREATE TABLE event_log (
  event_id    VARCHAR(96)  NOT NULL PRIMARY KEY,
  type        VARCHAR(40)  NOT NULL,
  topic       VARCHAR(128) NOT NULL,
  channel_id  VARCHAR(64)  NOT NULL,
  term_id     VARCHAR(96)  NOT NULL,
  ts          BIGINT       NOT NULL,
  trace_id    VARCHAR(64)  NOT NULL,
  payload     JSON         NOT NULL,
  KEY ix_event_term (term_id, ts)
) ENGINE=InnoDB;

-- One row per api_order_no (per channel): accepted bets and refused orders alike.
CREATE TABLE bet (
  channel_id        VARCHAR(64)  NOT NULL,
  api_order_no      VARCHAR(64)  NOT NULL,
  bet_id            VARCHAR(64)  NULL,
  term_id           VARCHAR(96)  NOT NULL,
  user_id           VARCHAR(64)  NOT NULL,
  currency          CHAR(3)      NOT NULL,
  amount            BIGINT       NOT NULL,
  auto_cashout_x100 INT          NULL,
  bet_type          VARCHAR(16)  NOT NULL,
  status            VARCHAR(16)  NOT NULL,
  reason            VARCHAR(64)  NULL,
  cashout_x100      INT          NULL,
  payout            BIGINT       NULL,
  cashout_mode      VARCHAR(8)   NULL,
  cashed_at         BIGINT       NULL,
  refund            BIGINT       NULL,
  debited           TINYINT(1)   NOT NULL DEFAULT 0,
  received_at       BIGINT       NOT NULL,
  updated_at        BIGINT       NOT NULL,
  PRIMARY KEY (channel_id, api_order_no),
  UNIQUE KEY uq_bet_id (bet_id),
  KEY ix_bet_term (term_id, status),
  KEY ix_bet_user (user_id, received_at)
) ENGINE=InnoDB;

CREATE TABLE bet_status_history (
  event_id   VARCHAR(96) NOT NULL PRIMARY KEY,
  bet_id     VARCHAR(64) NOT NULL,
  status     VARCHAR(16) NOT NULL,
  ts         BIGINT      NOT NULL,
  detail     JSON        NULL,
  KEY ix_history_bet (bet_id, ts)
) ENGINE=InnoDB;

-- Money leaving the system (DESIGN section 9): written in the same transaction as the
-- business row it pays; order_no is deterministic, so a second credit is refused here.
CREATE TABLE payout_outbox (
  id           BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  order_no     VARCHAR(128) NOT NULL,
  kind         VARCHAR(8)   NOT NULL,
  channel_id   VARCHAR(64)  NOT NULL,
  term_id      VARCHAR(96)  NOT NULL,
  bet_id       VARCHAR(64)  NULL,
  user_id      VARCHAR(64)  NOT NULL,
  currency     CHAR(3)      NOT NULL,
  amount       BIGINT       NOT NULL,
  meta         JSON         NULL,
  status       VARCHAR(8)   NOT NULL DEFAULT 'ready',
  retry_count  INT          NOT NULL DEFAULT 0,
  next_at      BIGINT       NOT NULL,
  leased_until BIGINT       NULL,
  last_error   VARCHAR(512) NULL,
  receipt      JSON         NULL,
  created_at   BIGINT       NOT NULL,
  updated_at   BIGINT       NOT NULL,
  UNIQUE KEY uq_outbox_order (order_no),
  KEY ix_outbox_ready (status, next_at)
) ENGINE=InnoDB;
