"""`aana migrate` as a person types it, on SQLite and PostgreSQL: exit codes, stdout vs stderr, messages."""

import pytest
from typer.testing import CliRunner

from aana_cli.main import app


@pytest.fixture
def runner():
    return CliRunner(env={"COLUMNS": "120"})


def _migrate(runner, url, *args):
    return runner.invoke(app, ["migrate", "--database-url", url, *args])


def test_status_exit_codes_follow_the_schema(runner, database_url):
    behind = _migrate(runner, database_url, "--status")
    assert behind.exit_code == 1
    assert "current revision: none (empty database)" in behind.stdout and "pending (5)" in behind.stdout
    assert "database: " in behind.stderr  # where the database came from goes to stderr

    applied = _migrate(runner, database_url)
    assert applied.exit_code == 0
    assert applied.stdout.splitlines()[:4] == [
        "applied 0001: Create deployments",
        "applied 0002: Create requests",
        "applied 0003: Add requests.stream and a per-deployment index",
        "applied 0004: Rename deployments to runs",
    ]
    current = _migrate(runner, database_url, "--status")
    assert current.exit_code == 0 and "up to date" in current.stdout
    assert "nothing to do" in _migrate(runner, database_url).stdout


def test_to_goes_down_and_up(runner, database_url):
    assert _migrate(runner, database_url).exit_code == 0
    down = _migrate(runner, database_url, "--to", "0001")
    assert down.exit_code == 0 and "now at revision 0001" in down.stdout
    assert "reverted 0004" in down.stdout and "reverted 0003" in down.stdout
    assert _migrate(runner, database_url, "--status").exit_code == 1
    up = _migrate(runner, database_url, "--to", "head")
    assert up.exit_code == 0 and "applied 0002" in up.stdout


def test_unknown_revision_is_an_error_listing_the_valid_ones(runner, database_url):
    result = _migrate(runner, database_url, "--to", "0042")
    assert result.exit_code == 1
    assert "unknown revision '0042'" in result.stderr and "0003" in result.stderr
    assert "Traceback" not in result.output


def test_sql_prints_the_ddl_without_touching_the_database(runner, database_url):
    result = _migrate(runner, database_url, "--sql")
    assert result.exit_code == 0
    assert "CREATE TABLE deployments" in result.stdout and "CREATE TABLE requests" in result.stdout
    assert "ALTER TABLE deployments RENAME TO runs" in result.stdout
    assert _migrate(runner, database_url, "--status").exit_code == 1  # still empty


def test_spec_database_url_is_used(runner, tmp_path):
    db = tmp_path / "from-spec.db"
    spec = tmp_path / "app.toml"
    spec.write_text(f'name = "a"\n[database]\nurl = "sqlite:///{db}"\n[deployments.e]\nengine = "echo"\n')
    result = CliRunner(env={"COLUMNS": "120", "AANA_DATABASE_URL": None}).invoke(app, ["migrate", "--spec", str(spec)])
    assert result.exit_code == 0, result.output
    assert "(from spec database.url)" in result.stderr and db.exists()
