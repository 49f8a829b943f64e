"""The guide's cleanup functions, on PostgreSQL only (SQLite has no stored functions):

    SELECT cleanup_old_executions(100);  -- keep the newest 100 executions per task
    SELECT cleanup_completed_tasks(30);  -- drop tasks completed/failed over 30 days ago

Django emulates on_delete in Python, so the database's foreign keys have no ON DELETE
actions: these functions apply the models' rules themselves (CASCADE rows deleted,
SET_NULL columns cleared). tests/test_maintenance.py checks that every foreign key to
these tables is handled here; a new one must be added to both functions.
"""

from django.db import migrations

FINISHED = "('completed', 'failed', 'skipped')"

CLEANUP_OLD_EXECUTIONS = f"""
CREATE OR REPLACE FUNCTION cleanup_old_executions(keep_count integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted integer;
BEGIN
    IF keep_count IS NULL OR keep_count < 0 THEN
        RAISE EXCEPTION 'cleanup_old_executions: keep_count must be 0 or more, not %',
            keep_count;
    END IF;
    -- Finished executions beyond each task's newest keep_count (queued, running and
    -- retrying ones never go). SET_NULL references are cleared in the same statement.
    WITH doomed AS (
        SELECT id FROM (
            SELECT id, status,
                   row_number() OVER (PARTITION BY task_id
                                      ORDER BY queued_at DESC, id DESC) AS position
            FROM task_executions
        ) ranked
        WHERE position > keep_count AND status IN {FINISHED}
    ), deliveries_cleared AS (
        UPDATE webhook_deliveries SET execution_id = NULL
        WHERE execution_id IN (SELECT id FROM doomed)
    ), reports_cleared AS (
        UPDATE reports SET execution_id = NULL
        WHERE execution_id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM task_executions
        WHERE id IN (SELECT id FROM doomed) AND status IN {FINISHED}
        RETURNING 1
    )
    SELECT count(*)::integer INTO deleted FROM gone;
    RETURN deleted;
END
$$;
"""

CLEANUP_COMPLETED_TASKS = """
CREATE OR REPLACE FUNCTION cleanup_completed_tasks(days_old integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    doomed uuid[];
    beat_rows integer[];
    deleted integer;
BEGIN
    IF days_old IS NULL OR days_old < 0 THEN
        RAISE EXCEPTION 'cleanup_completed_tasks: days_old must be 0 or more, not %', days_old;
    END IF;
    -- Locked, so a task re-armed meanwhile (status back to active) is re-checked and kept.
    SELECT coalesce(array_agg(id), '{}') INTO doomed FROM (
        SELECT id FROM scheduled_tasks
        WHERE status IN ('completed', 'failed')
          AND updated_at < now() - make_interval(days => days_old)
        FOR UPDATE
    ) finished;
    IF cardinality(doomed) = 0 THEN
        RETURN 0;
    END IF;
    -- The tasks' own beat rows (linked, or named 'scheduled-task:<id>' as in
    -- tasks_app.conf.BEAT_ENTRY_PREFIX); shared crontab/clocked schedule rows stay.
    SELECT coalesce(array_agg(id), '{}') INTO beat_rows
    FROM django_celery_beat_periodictask
    WHERE id IN (SELECT periodic_task_id FROM scheduled_tasks
                 WHERE id = ANY(doomed) AND periodic_task_id IS NOT NULL)
       OR name IN (SELECT 'scheduled-task:' || task_id::text FROM unnest(doomed) AS task_id);
    -- The models' on_delete rules, in dependency order.
    UPDATE reports SET task_id = NULL WHERE task_id = ANY(doomed);
    UPDATE reports SET execution_id = NULL
    WHERE execution_id IN (SELECT id FROM task_executions WHERE task_id = ANY(doomed));
    UPDATE webhook_deliveries SET execution_id = NULL
    WHERE execution_id IN (SELECT id FROM task_executions WHERE task_id = ANY(doomed));
    DELETE FROM webhook_deliveries
    WHERE webhook_id IN (SELECT id FROM task_webhooks WHERE task_id = ANY(doomed));
    DELETE FROM task_webhooks WHERE task_id = ANY(doomed);
    DELETE FROM task_mailboxes WHERE task_id = ANY(doomed);
    DELETE FROM task_executions WHERE task_id = ANY(doomed);
    DELETE FROM scheduled_tasks WHERE id = ANY(doomed);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF cardinality(beat_rows) > 0 THEN
        DELETE FROM django_celery_beat_periodictask WHERE id = ANY(beat_rows);
        -- PeriodicTasks.update_changed(): running beats reload their schedule.
        INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, now())
        ON CONFLICT (ident) DO UPDATE SET last_update = EXCLUDED.last_update;
    END IF;
    RETURN deleted;
END
$$;
"""

DROP = """
DROP FUNCTION IF EXISTS cleanup_old_executions(integer);
DROP FUNCTION IF EXISTS cleanup_completed_tasks(integer);
"""


def run_on_postgresql(*statements):
    """A RunPython callable executing ``statements`` on PostgreSQL, nothing elsewhere.
    (A plain cursor: the schema editor would read RAISE's ``%`` as a placeholder.)"""

    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0003_triggers"),
    ]

    operations = [
        migrations.RunPython(
            run_on_postgresql(CLEANUP_OLD_EXECUTIONS, CLEANUP_COMPLETED_TASKS),
            run_on_postgresql(DROP),
            elidable=False,
        ),
    ]
