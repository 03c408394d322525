"""aana's Alembic migrations: env.py and versions/, shipped in the wheel so `aana migrate` works when installed.

Run them through `runtime.store.migrate`, which builds the Alembic config in code; there is no alembic.ini.
To write a new revision, copy the newest file in versions/, bump its number, and name it by intent.
"""

# Marks this as aana's package, not some other top-level `migrations` folder on sys.path.
AANA_MIGRATIONS = True
