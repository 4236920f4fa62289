"""What a source's `query:` may be: one read-only SELECT, checked with a real SQL parser (sqlglot).

`query:` runs on an agency's database (postgres, mysql, sqlite sources), so config validation parses
it in the source kind's dialect and refuses, naming the city.yaml key, anything that is not exactly
one SELECT (WITH ... SELECT, UNION / INTERSECT / EXCEPT and VALUES are fine): writes and DDL anywhere
in the tree (a PostgreSQL `with x as (insert ... returning *)` too), `SELECT ... INTO` (a file or a
table), `FOR UPDATE` / `FOR SHARE` / `LOCK IN SHARE MODE`, MySQL executable comments (`/*! ... */`,
which the server runs), and calls of the functions in DENIED_FUNCTIONS (files, sequences, sleeps,
locks, sessions, other servers). A query the parser cannot read is refused too.

The parser is the first wall; the second is the connection itself (orchestration/connectors/sql.py),
which reads in a read-only transaction, so a write the parser cannot see (a user-defined function
that inserts) fails in the database.
"""

from __future__ import annotations

import logging

#: function-name prefixes a source query may not call (lower case; matched on the bare function name,
#: so `pg_catalog.pg_read_file` and `"pg_read_file"` are refused too), with what they do
DENIED_FUNCTIONS: dict[str, str] = {
    # PostgreSQL: server files, large objects (import / export files), sequences, sleeps, other sessions
    "pg_read_file": "reads a file on the database server",
    "pg_read_binary_file": "reads a file on the database server",
    "pg_ls_": "lists folders on the database server",
    "pg_stat_file": "reads file metadata on the database server",
    "pg_file_": "writes files on the database server (adminpack)",
    "lo_": "imports or exports files as large objects",
    "nextval": "advances a sequence",
    "setval": "changes a sequence",
    "currval": "reads session sequence state",
    "lastval": "reads session sequence state",
    "dblink": "connects to another server",
    "pg_sleep": "sleeps",
    "pg_terminate_backend": "ends other sessions",
    "pg_cancel_backend": "cancels other sessions' queries",
    "pg_reload_conf": "reloads the server configuration",
    "pg_rotate_logfile": "administers the server",
    "pg_promote": "administers the server",
    "pg_switch_wal": "administers the server",
    "pg_create_": "administers the server",
    "pg_drop_": "administers the server",
    "pg_replication_": "administers replication",
    "pg_logical_": "administers replication",
    "pg_advisory": "takes locks",
    "pg_try_advisory": "takes locks",
    "pg_notify": "sends notifications",
    "pg_export_snapshot": "administers transactions",
    "set_config": "changes a setting",
    "query_to_xml": "runs a query given as text",
    "cursor_to_xml": "runs a cursor",
    "txid_current": "assigns a transaction id",
    "pg_current_xact_id": "assigns a transaction id",
    # MySQL / MariaDB: files, sleeps, locks, user-defined command execution
    "load_file": "reads a file on the database server",
    "sleep": "sleeps",
    "benchmark": "burns server CPU",
    "sys_exec": "runs a command on the database server",
    "sys_eval": "runs a command on the database server",
    "get_lock": "takes locks",
    "release_lock": "releases locks",
    "release_all_locks": "releases locks",
    "master_pos_wait": "waits on replication",
    "source_pos_wait": "waits on replication",
    "master_gtid_wait": "waits on replication",
    "wait_for_executed_gtid_set": "waits on replication",
    # SQLite (CLI and extension functions)
    "readfile": "reads a file",
    "writefile": "writes a file",
    "load_extension": "loads native code",
    "edit": "starts an editor",
    "fts3_tokenizer": "reads or sets native pointers",
}

#: the dialect sqlglot parses each SQL source kind in
DIALECTS = {"postgres": "postgres", "mysql": "mysql", "sqlite": "sqlite"}

READS = "a source query is one SELECT (WITH, UNION and VALUES allowed): citylake only reads"


def denied_function(name: str) -> str | None:
    """What a function does when a source query may not call it, else None."""
    low = name.lower()
    for prefix, what in DENIED_FUNCTIONS.items():
        if low.startswith(prefix):
            return what
    return None


def query_problem(text: str, kind: str) -> str | None:
    """Why `text` is not an acceptable `query:` for a source of `kind`, or None when it is."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.tokens import TokenType

    dialect = DIALECTS[kind]
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(text)
    except SqlglotError as exc:
        return f"refused: it cannot be read as {dialect} SQL ({_first_line(exc)}); {READS}"
    if kind == "mysql":
        for tok in tokens:
            if any(c.lstrip().startswith(("!", "M!")) for c in tok.comments):
                return "refused: /*! ... */ comments are SQL that MySQL runs; remove them (" + READS + ")"
    log = logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)  # no "falling back to parsing as a Command" warnings on stderr
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None and type(s) is not exp.Semicolon]
    except SqlglotError as exc:
        if any(t.token_type == TokenType.INTO for t in tokens):
            return f"refused: SELECT ... INTO writes a file or a table; {READS}"
        return f"refused: it cannot be read as {dialect} SQL ({_first_line(exc)}); {READS}"
    finally:
        log.setLevel(level)
    if not statements:
        return f"no statement; {READS}"
    if len(statements) > 1:
        return f"one statement only: {len(statements)} statements were given, separated by ';' ({READS})"
    stmt = statements[0]
    if not isinstance(stmt, exp.Select | exp.SetOperation | exp.Subquery | exp.Values):
        head = stmt.this if isinstance(stmt, exp.Command) else stmt.key
        return f"a query reads: it starts with select or with; refused: {str(head).upper()} is not a SELECT ({READS})"
    for node in stmt.walk():
        problem = _node_problem(node, exp)
        if problem:
            return f"refused: {problem}; {READS}"
    return None


def _node_problem(node, exp) -> str | None:
    if isinstance(node, exp.DML | exp.DDL | exp.Merge | exp.Drop | exp.Alter | exp.Copy):
        return f"it holds a write ({node.key.upper()})"
    if isinstance(node, exp.Command | exp.Set | exp.Grant | exp.Revoke | exp.Transaction | exp.Commit):
        head = node.this if isinstance(node, exp.Command) else node.key
        return f"it holds a statement that is not a SELECT ({str(head).upper()})"
    if isinstance(node, exp.Into):
        return "SELECT ... INTO writes a file or a table"
    if isinstance(node, exp.Lock):
        return "FOR UPDATE / FOR SHARE locks rows"
    if isinstance(node, exp.Func):
        names = [node.name] if isinstance(node, exp.Anonymous) else [node.sql_name(), *type(node).sql_names()]
        for name in names:
            what = denied_function(name)
            if what:
                return f"{name.lower()}() {what}"
    return None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160]
