-- Seamless mode (DESIGN section 9): the gateway debits a player's wallet before placing the
-- bet. The intent is written first, so that a debit whose answer was lost (timeout, dropped
-- connection, gateway crash) is resolved later by repeating it (the wallet is idempotent on
-- order_no) and then placing the bet with its original receive time: the pipeline accepts it
-- or refuses it, and a refused debited bet is refunded automatically.
CREATE TABLE player_debit (
  channel_id    VARCHAR(64)  NOT NULL,
  api_order_no  VARCHAR(64)  NOT NULL,
  user_id       VARCHAR(64)  NOT NULL,
  currency      CHAR(3)      NOT NULL,
  amount        BIGINT       NOT NULL,
  command       JSON         NOT NULL,
  state         VARCHAR(16)  NOT NULL,
  wallet_result JSON         NULL,
  received_at   BIGINT       NOT NULL,
  updated_at    BIGINT       NOT NULL,
  PRIMARY KEY (channel_id, api_order_no),
  KEY ix_player_debit_pending (state, updated_at)
) ENGINE=InnoDB;
