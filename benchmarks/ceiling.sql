-- One pgbench transaction of the raw-SQL ceiling (see ceiling.py).
--
-- Take up to :batch due jobs that no other client is taking, mark them running
-- under this client's name with a lease, and commit; then mark what this
-- client holds as done, and commit. Two round trips and two commits per batch,
-- no Python and no ORM: as fast as claiming and completing can go here.
WITH batch AS (
    SELECT id
    FROM jsbench_ceiling
    WHERE status = 'scheduled' AND next_run_at <= now()
    ORDER BY next_run_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
UPDATE jsbench_ceiling AS job
SET status = 'running',
    owner = 'client-' || :client_id,
    lease_until = now() + interval '30 seconds',
    version = job.version + 1
FROM batch
WHERE job.id = batch.id;

UPDATE jsbench_ceiling
SET status = 'done', owner = NULL, lease_until = NULL, last_run_at = now(),
    version = version + 1
WHERE status = 'running' AND owner = 'client-' || :client_id;
