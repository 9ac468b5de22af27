-- stocktrace's queries are short lookups and small aggregates; PostgreSQL's JIT compiler spends more time
-- compiling them (measured ~0.7 s per query on fresh, unanalysed tables) than it saves. Off for this database.
do $$
begin
    execute format('alter database %I set jit = off', current_database());
exception when insufficient_privilege then
    raise warning 'cannot turn JIT off for this database (%); ask its owner to run: alter database % set jit = off',
        sqlerrm, current_database();
end
$$;
