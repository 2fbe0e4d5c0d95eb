-- The audit log (DESIGN section 11, streams/audit.py): one row per write, hash-chained.
-- Rows are appended, never updated or deleted; row_hash = SHA-256 over
-- [seq, ts, actor, key_id, action, target, request, prev_hash] (canonical JSON), and prev_hash is
-- the row_hash of row seq - 1 (64 zeros for row 1). `request` is stored as the exact text hashed.
CREATE TABLE audit_log (
  seq        BIGINT       NOT NULL PRIMARY KEY,
  ts         BIGINT       NOT NULL,
  actor      VARCHAR(128) NOT NULL,
  key_id     VARCHAR(64)  NOT NULL,
  action     VARCHAR(64)  NOT NULL,
  target     VARCHAR(255) NOT NULL,
  request    MEDIUMTEXT   NOT NULL,
  prev_hash  CHAR(64)     NOT NULL,
  row_hash   CHAR(64)     NOT NULL,
  KEY ix_audit_action (action, seq)
) ENGINE=InnoDB;

-- The chain's tip: appenders lock this row, so each new row follows the last committed one.
CREATE TABLE audit_head (
  id         TINYINT      NOT NULL PRIMARY KEY,
  last_seq   BIGINT       NOT NULL,
  last_hash  CHAR(64)     NOT NULL
) ENGINE=InnoDB;
INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Sealed segments (consecutive rows) and their WORM copies on S3 Object Lock (COMPLIANCE).
CREATE TABLE audit_segment (
  segment_no   BIGINT       NOT NULL PRIMARY KEY,
  first_seq    BIGINT       NOT NULL,
  last_seq     BIGINT       NOT NULL,
  last_hash    CHAR(64)     NOT NULL,
  body_sha256  CHAR(64)     NOT NULL,
  sealed_at    BIGINT       NOT NULL,
  retain_until BIGINT       NOT NULL,
  object_key   VARCHAR(255) NOT NULL,
  version_id   VARCHAR(255) NULL,
  exported_at  BIGINT       NULL,
  UNIQUE KEY uq_audit_segment_rows (first_seq)
) ENGINE=InnoDB;
