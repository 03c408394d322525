"""What the aana database keeps: runs (one row per `aana up`) and requests (one row per chat completion).

`models` holds the tables, `migrate` the schema's lifecycle (Alembic scripts live in the top-level `migrations`
package), `runs` and `recorder` the writes and queries. Importing this package does nothing; import the module you need.
"""
