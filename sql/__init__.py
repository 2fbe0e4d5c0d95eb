"""MySQL/MariaDB schema, migrations and the async engine factory."""
