"""Single-row statements for the worker's hot path, without the ORM's query compiler.

Django compiles every QuerySet call afresh: about 0.5 ms of CPU for an ``update()`` or an
``exists()`` here, 1–2 ms for a ``get()`` with ``select_related``, against 0.05 ms for the
statement itself. A run makes several, so the compiler was most of a run's cost. These
helpers write the SQL the ORM would write for one row, from the model's metadata: values
go through their field's ``get_db_prep_save``/``get_db_prep_value`` and rows come back
through the fields' converters, so what is stored and read is what the ORM stores and
reads. PostgreSQL and SQLite (3.35+, for RETURNING).

    rows.update(TaskExecution, {"pk": pk, "status": rows.In(["queued", "retrying"])},
                {"status": "running", "logs": rows.Append([line])}, returning=True)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import connections, models

M = TypeVar("M", bound=models.Model)


@dataclass(frozen=True)
class In:
    """``column IN (values)`` in a where."""

    values: tuple[Any, ...] | list[Any]


@dataclass(frozen=True)
class Not:
    """``column <> value`` in a where."""

    value: Any


@dataclass(frozen=True)
class Add:
    """``column = column + amount`` in a set."""

    amount: Any


@dataclass(frozen=True)
class Append:
    """``column`` (a JSON list) with ``items`` appended by the database, in a set."""

    items: list[Any]


def list_append_sql(vendor: str, column: str, items: list[Any]) -> tuple[str, list[Any]]:
    """SQL for a JSON list column with ``items`` appended; a column that holds no list
    starts a new one."""
    if vendor == "postgresql":
        array = f"CASE WHEN jsonb_typeof({column}) = 'array' THEN {column} ELSE '[]'::jsonb END"
        return f"({array} || %s::jsonb)", [json.dumps(items)]
    if vendor == "sqlite":
        # Each '$[#]' path appends at the array's end; the edits apply left to right.
        appends = "".join(", '$[#]', json(%s)" for _ in items)
        array = f"CASE WHEN json_type({column}) = 'array' THEN {column} ELSE '[]' END"
        return f"json_insert({array}{appends})", [json.dumps(item) for item in items]
    raise NotImplementedError(f"a JSON list append does not support {vendor}")


@dataclass(frozen=True)
class _Meta:
    table: str
    fields: dict[str, models.Field]  # by name, attname and "pk"
    quoted: dict[str, str]  # their columns, quoted, by the same keys
    columns: str  # every concrete column, in order, for SELECT / RETURNING
    quoted_columns: tuple[str, ...]
    attnames: list[str]
    pk: str  # the primary key's attname
    converters: list[tuple[int, list[Any], Any]]

    def prefixed(self, alias: str) -> str:
        return ", ".join(f"{alias}.{column}" for column in self.quoted_columns)


@functools.cache
def _meta(model: type[models.Model], alias: str) -> _Meta:
    connection = connections[alias]
    quote = connection.ops.quote_name
    concrete = model._meta.concrete_fields
    fields: dict[str, models.Field] = {"pk": model._meta.pk}  # type: ignore[dict-item]
    for field in concrete:
        fields[field.name] = fields[field.attname] = field
    converters = []
    for index, field in enumerate(concrete):
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if found:
            converters.append((index, found, column))
    quoted = {name: quote(str(field.column)) for name, field in fields.items()}
    return _Meta(
        table=quote(model._meta.db_table),
        fields=fields,
        quoted=quoted,
        columns=", ".join(quoted[field.name] for field in concrete),
        quoted_columns=tuple(quoted[field.name] for field in concrete),
        attnames=[field.attname for field in concrete],
        pk=model._meta.pk.attname,  # type: ignore[union-attr]
        converters=converters,
    )


Where = dict[str, Any] | list[tuple[str, Any]]


def _where(meta: _Meta, where: Where, alias: str) -> tuple[str, list[Any]]:
    """``{name: value}`` (or pairs, to name a column twice): each a condition, all ANDed."""
    connection = connections[alias]
    terms: list[str] = []
    params: list[Any] = []
    for name, wanted in where.items() if isinstance(where, dict) else where:
        field, column = meta.fields[name], meta.quoted[name]
        if wanted is None:
            terms.append(f"{column} IS NULL")
        elif isinstance(wanted, In):
            terms.append(f"{column} IN ({', '.join('%s' for _ in wanted.values)})")
            params.extend(field.get_db_prep_value(v, connection) for v in wanted.values)
        elif isinstance(wanted, Not):
            terms.append(f"{column} <> %s")
            params.append(field.get_db_prep_value(wanted.value, connection))
        else:
            terms.append(f"{column} = %s")
            params.append(field.get_db_prep_value(wanted, connection))
    return " AND ".join(terms), params


def _row(model: type[M], meta: _Meta, values: Any, alias: str) -> M:
    values = list(values)
    connection = connections[alias]
    for index, found, column in meta.converters:
        for converter in found:
            values[index] = converter(values[index], column, connection)
    return model.from_db(alias, meta.attnames, values)


#: psycopg prepares a statement after this many runs of it; Django turns preparing off
#: (None), and its own statements carry their values inline. Set, only statements that
#: ask (these) are prepared.
ONLY_WHEN_ASKED = 2**31


def cursor(alias: str = "default") -> Any:
    """A Django cursor for these statements. On PostgreSQL (unless
    SCHEDULER_PREPARED_STATEMENTS is false) each statement is bound server-side and
    prepared once per connection: planning them again was a third of the database's work
    per run. The cursor keeps Django's error wrapping, query logging and health check."""
    connection = connections[alias]
    if connection.vendor != "postgresql" or not settings.SCHEDULER_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        if raw.prepare_threshold is None:
            raw.prepare_threshold = ONLY_WHEN_ASKED
        prepared = _prepared_cursor_class()(raw)
    if connection.queries_logged:
        return connection.make_debug_cursor(prepared)
    return connection.make_cursor(prepared)


@functools.cache
def _prepared_cursor_class() -> type:
    import psycopg
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparedCursor(ServerBindingCursor):  # type: ignore[misc,valid-type]
        def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
            options["prepare"] = True
            try:
                return super().execute(query, params, **options)  # type: ignore[misc]
            except psycopg.errors.FeatureNotSupported as exc:
                # "cached plan must not change result type" (in any server language)
                if exc.diag.source_function != "RevalidateCachedQuery":
                    raise
                # A migration changed a column under a statement prepared before it.
                raw: Any = self.connection  # type: ignore[attr-defined]  # psycopg Cursor
                if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    # The transaction is lost: drop the connection, so that the caller's
                    # retry (execution_finish retries OperationalError) starts afresh.
                    raw.close()
                    raise psycopg.OperationalError(f"{exc}; reconnecting") from exc
                raw.execute("DEALLOCATE ALL")  # psycopg forgets its prepared statements too
                return super().execute(query, params, **options)  # type: ignore[misc]

    return PreparedCursor


def get(model: type[M], where: Where, *, alias: str = "default") -> M | None:
    """The one row that matches, or None."""
    meta = _meta(model, alias)
    condition, params = _where(meta, where, alias)
    with cursor(alias) as db:
        db.execute(f"SELECT {meta.columns} FROM {meta.table} WHERE {condition}", params)
        found = db.fetchone()
    return None if found is None else _row(model, meta, found, alias)


def exists_sql(
    model: type[models.Model], where: Where, *, alias: str = "default"
) -> tuple[str, list[Any]]:
    """``EXISTS (...)`` for a row ``where`` matches, to put in a larger statement."""
    meta = _meta(model, alias)
    condition, params = _where(meta, where, alias)
    return f"EXISTS (SELECT 1 FROM {meta.table} WHERE {condition})", params


def exists(model: type[models.Model], where: Where, *, alias: str = "default") -> bool:
    sql, params = exists_sql(model, where, alias=alias)
    with cursor(alias) as db:
        db.execute(f"SELECT {sql}", params)
        return bool(db.fetchone()[0])


def _set(meta: _Meta, values: dict[str, Any], alias: str) -> tuple[str, list[Any]]:
    connection = connections[alias]
    assignments, params = [], []
    for name, value in values.items():
        field, column = meta.fields[name], meta.quoted[name]
        if isinstance(value, Append):
            sql, extra = list_append_sql(connection.vendor, column, value.items)
            assignments.append(f"{column} = {sql}")
            params.extend(extra)
        elif isinstance(value, Add):
            assignments.append(f"{column} = {column} + %s")
            params.append(field.get_db_prep_save(value.amount, connection))
        else:
            assignments.append(f"{column} = %s")
            params.append(field.get_db_prep_save(value, connection))
    return ", ".join(assignments), params


def update_sql(
    model: type[models.Model], where: Where, values: dict[str, Any], *, alias: str = "default"
) -> tuple[str, list[Any]]:
    """The UPDATE statement, ending with its WHERE (more conditions may follow)."""
    meta = _meta(model, alias)
    assignments, params = _set(meta, values, alias)
    condition, where_params = _where(meta, where, alias)
    return f"UPDATE {meta.table} SET {assignments} WHERE {condition}", [*params, *where_params]


def update(
    model: type[models.Model], where: Where, values: dict[str, Any], *, alias: str = "default"
) -> int:
    """UPDATE the rows ``where`` matches; how many it changed."""
    sql, params = update_sql(model, where, values, alias=alias)
    with cursor(alias) as db:
        db.execute(sql, params)
        return db.rowcount


def update_returning(
    model: type[M],
    where: Where,
    values: dict[str, Any],
    *,
    related: str | None = None,
    alias: str = "default",
) -> M | None:
    """UPDATE the one row ``where`` matches and return it as it is now (None when none
    matched), with the row its foreign key ``related`` points to when asked: in the same
    statement on PostgreSQL, read after it on SQLite (whose RETURNING cannot join)."""
    connection = connections[alias]
    meta = _meta(model, alias)
    sql, params = update_sql(model, where, values, alias=alias)
    other = None if related is None else cast(models.ForeignKey, model._meta.get_field(related))
    with cursor(alias) as db:
        if other is None or connection.vendor != "postgresql":
            db.execute(f"{sql} RETURNING {meta.columns}", params)
            found = db.fetchall()  # to the end, so that SQLite completes the statement
            row = _row(model, meta, found[0], alias) if found else None
            if row is None or other is None:
                return row
            target = get(_target(other), {"pk": getattr(row, other.attname)}, alias=alias)
        else:
            target_meta = _meta(_target(other), alias)
            fk = meta.quoted[other.name]
            db.execute(
                f"WITH changed AS ({sql} RETURNING {meta.columns}) SELECT changed.*, "
                f"{target_meta.prefixed('target')} FROM changed LEFT JOIN "
                f"{target_meta.table} target ON target.{target_meta.quoted['pk']} = changed.{fk}",
                params,
            )
            found = db.fetchall()
            if not found:
                return None
            width = len(meta.attnames)
            row = _row(model, meta, found[0][:width], alias)
            has_target = found[0][width + target_meta.attnames.index(target_meta.pk)] is not None
            target = (
                _row(other.related_model, target_meta, found[0][width:], alias)
                if has_target
                else None
            )
    if target is None:
        return None  # the row it points to is gone (deleted meanwhile)
    setattr(row, other.name, target)
    return row


def _target(foreign_key: models.ForeignKey) -> type[models.Model]:
    return cast(type[models.Model], foreign_key.related_model)


def update_and_exists(
    model: type[models.Model],
    where: Where,
    values: dict[str, Any],
    *,
    exists: tuple[type[models.Model], Where],
    alias: str = "default",
) -> tuple[int, bool]:
    """UPDATE the rows ``where`` matches and, in the same statement, tell whether a row
    of ``exists`` (a model and its where) exists: (rows changed, exists); the answer is
    False when no row changed."""
    sql, params = update_sql(model, where, values, alias=alias)
    found_sql, found_params = exists_sql(*exists, alias=alias)
    with cursor(alias) as db:
        db.execute(f"{sql} RETURNING {found_sql}", [*params, *found_params])
        found = db.fetchall()
    return len(found), bool(found and found[0][0])
