-- The secret half of each fairness chain (DESIGN section 6). Only the crash_secret user
-- can read this database; the crash user, the sink and every view have no grant on it.
-- seed = h_N; checkpoints = h_k for every k that is a multiple of checkpoint_every
-- (concatenated raw 32-byte hashes, index 0 = h_0), so h_k needs < checkpoint_every hashes.
CREATE TABLE chain_secret (
  channel_id        VARCHAR(64) NOT NULL,
  chain_no          INT         NOT NULL,
  length            INT         NOT NULL,
  seed              CHAR(64)    NOT NULL,
  salt              CHAR(64)    NOT NULL,
  checkpoint_every  INT         NOT NULL,
  checkpoints       LONGBLOB    NOT NULL,
  created_at        BIGINT      NOT NULL,
  PRIMARY KEY (channel_id, chain_no)
) ENGINE=InnoDB;
