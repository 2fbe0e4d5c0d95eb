-- Reference ApiSys wallet (DESIGN section 9): the operator's player balances and an idempotent
-- journal of every wallet operation. Money is integer minor units, times are unix ms (UTC).

-- One balance per player and currency. A debit never takes it below zero (the CHECK is the
-- last line of defence: the service refuses such a debit before it gets here).
CREATE TABLE wallet_account (
  user_id     VARCHAR(64)  NOT NULL,
  currency    CHAR(3)      NOT NULL,
  balance     BIGINT       NOT NULL,
  created_at  BIGINT       NOT NULL,
  updated_at  BIGINT       NOT NULL,
  PRIMARY KEY (user_id, currency),
  CONSTRAINT wallet_account_balance_nonneg CHECK (balance >= 0)
) ENGINE=InnoDB;

-- One row per order_no, globally unique across debit, credit and adjust, written in the same
-- DB transaction as the balance change it records: the unique key is what makes a retried or
-- concurrent request apply once. `digest` = SHA-256 of (op, user_id, currency, amount) tells a
-- faithful repeat from a conflicting one, `result` is the JSON answered the first time and
-- returned again on every repeat. For `adjust` (admin set-balance) `amount` is the signed delta.
-- `pending` only exists inside the writing transaction, never committed.
CREATE TABLE wallet_tx (
  tx_id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  order_no       VARCHAR(128) NOT NULL,
  op             VARCHAR(8)   NOT NULL,
  user_id        VARCHAR(64)  NOT NULL,
  currency       CHAR(3)      NOT NULL,
  amount         BIGINT       NOT NULL,
  kind           VARCHAR(32)  NOT NULL DEFAULT '',
  digest         CHAR(64)     NOT NULL,
  status         VARCHAR(16)  NOT NULL,
  balance_after  BIGINT       NULL,
  result         JSON         NOT NULL,
  meta           JSON         NULL,
  created_at     BIGINT       NOT NULL,
  UNIQUE KEY wallet_tx_order_no (order_no),
  KEY wallet_tx_account (user_id, currency, tx_id),
  CONSTRAINT wallet_tx_op CHECK (op IN ('debit', 'credit', 'adjust')),
  CONSTRAINT wallet_tx_status CHECK (status IN ('pending', 'ok', 'refused'))
) ENGINE=InnoDB;
