-- The committed hit value of each must_hit_by jackpot cycle (DESIGN section 10): drawn at the
-- reset, published only as SHA-256("<hit_value>:<nonce>") until the hit reveals it. Like the
-- chain secrets, readable only by the crash_secret user.
CREATE TABLE jackpot_secret (
  jackpot_id  VARCHAR(64) NOT NULL,
  cycle       INT         NOT NULL,
  hit_value   BIGINT      NOT NULL,
  nonce       CHAR(32)    NOT NULL,
  created_at  BIGINT      NOT NULL,
  PRIMARY KEY (jackpot_id, cycle)
) ENGINE=InnoDB;
