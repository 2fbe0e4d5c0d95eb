-- The operators' console accounts (web/accounts.py): who may log in to
-- /ops/console/, with which role and on which operator group. Only a scrypt hash of the password
-- is kept (`scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`: its parameters travel with it). Made with
-- `crash-admin operator add`; every change of an account is a row of the audit log.
CREATE TABLE operator_account (
  name            VARCHAR(48)  NOT NULL PRIMARY KEY,
  role            VARCHAR(8)   NOT NULL,               -- admin | reader
  operator_group  VARCHAR(48)  NOT NULL DEFAULT '',    -- '' = every group
  password_hash   VARCHAR(255) NOT NULL,
  disabled        TINYINT(1)   NOT NULL DEFAULT 0,
  created_at      BIGINT       NOT NULL,
  updated_at      BIGINT       NOT NULL
) ENGINE=InnoDB;
