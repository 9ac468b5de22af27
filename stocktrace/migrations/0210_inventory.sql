-- Inventory: what each product is (SKU by GTIN) and its lots, what the books (ERP/WMS) say is where, and what the
-- readers see there. The API (tracking/inventory_api.py) writes skus, lots, book_* and cycle_counts; item_state
-- and items come from the presence resolver. Dashboards and the alert rules read the views at the end.
--
-- GTINs are stored as 14 digits (GTIN-8/12/13 left-padded with zeros, GS1 General Specifications §3.3.2), the
-- form that SGTIN decoding gives items.gtin, so the two join without conversion.

create table skus (
    gtin                  text        primary key check (gtin ~ '^[0-9]{14}$'),
    name                  text        not null,
    temperature_min_c     double precision,
    temperature_max_c     double precision,
    humidity_min_pct      double precision,
    humidity_max_pct      double precision,
    lead_time_days        double precision check (lead_time_days >= 0),
    unit_cost             double precision check (unit_cost >= 0),
    order_cost            double precision check (order_cost >= 0),         -- cost of placing one order
    holding_cost_rate     double precision check (holding_cost_rate >= 0),  -- per year, fraction of unit_cost
    reorder_minimum_units integer     check (reorder_minimum_units >= 0),   -- a fixed reorder point that wins
    created_at            timestamptz not null default now(),
    updated_at            timestamptz not null default now(),
    check (temperature_min_c <= temperature_max_c),
    check (humidity_min_pct <= humidity_max_pct)
);

-- A lot (batch, GS1 AI 10) of one GTIN. items.lot names it; lot numbers are unique within a deployment here
-- (GS1 only makes them unique per GTIN: an ERP that reuses numbers across products prefixes them on export).
create table lots (
    lot          text        primary key,
    gtin         text        not null check (gtin ~ '^[0-9]{14}$'),
    expires_on   date,
    produced_at  timestamptz,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
create index lots_gtin on lots (gtin);
create index items_lot on items (lot) where lot is not null;

-- ----------------------------------------------------------------------------------------------------
-- The location hierarchy, flattened: one row per location and each of its ancestors, itself included at
-- depth 0. Computed on each use rather than kept in a closure table by triggers: the registry rewrites parents
-- and sites (ON UPDATE CASCADE) and a function can never be stale; a few thousand locations flatten in
-- milliseconds. These are functions that the planner does not inline (the SET clause), so it plans with their
-- ROWS estimate: planned inline, a recursive CTE over a table without statistics yet (a new deployment's
-- locations, rarely large enough for autovacuum to analyze) is estimated at millions of rows, and the query
-- then spends most of a second JIT-compiling.
create function location_ancestry_rows() returns table (location_id text, ancestor_id text, depth integer)
language sql stable rows 2000 set jit = off as $$
    with recursive up (location_id, ancestor_id, depth) as (
        select id, id, 0 from locations
        union all
        select up.location_id, l.parent_id, up.depth + 1
        from up join locations l on l.id = up.ancestor_id
        where l.parent_id is not null
    )
    select location_id, ancestor_id, depth from up
$$;

create view location_ancestry as select location_id, ancestor_id, depth from location_ancestry_rows();

-- A location and everything inside it, for the queries that start from one location.
create function location_subtree(root text) returns table (location_id text, depth integer)
language sql stable rows 50 set jit = off as $$
    with recursive down (location_id, depth) as (
        select id, 0 from locations where id = root
        union all
        select l.id, down.depth + 1 from down join locations l on l.parent_id = down.location_id
    )
    select location_id, depth from down
$$;

-- ----------------------------------------------------------------------------------------------------
-- Book inventory, as imported. Every import is kept (history); the book now is, per (gtin, location), the
-- line with the latest as_of (then the latest import). An import with complete_for set is the whole book of
-- that location and everything inside it: older lines there that it does not repeat no longer count, so a
-- product that is gone from the ERP's export goes from the book too. Other imports are deltas: to clear a
-- line, send quantity 0.
create table book_imports (
    id              bigint      generated always as identity primary key,
    source          text        not null,
    as_of           timestamptz not null,
    complete_for    text,
    imported_at     timestamptz not null default now(),
    lines_accepted  integer     not null,
    lines_rejected  integer     not null
);

create table book_lines (
    import_id    bigint      not null references book_imports (id) on delete cascade,
    gtin         text        not null check (gtin ~ '^[0-9]{14}$'),
    location_id  text        not null,   -- checked at import; no foreign key, so history outlives a location
    quantity     integer     not null check (quantity >= 0),
    as_of        timestamptz not null,
    primary key (import_id, gtin, location_id)
);
create index book_lines_current on book_lines (gtin, location_id, as_of desc, import_id desc);
create index book_lines_location on book_lines (location_id);

-- The current book at root and everything inside it (everywhere when root is null).
create function book_current(root text default null)
returns table (gtin text, location_id text, quantity integer, as_of timestamptz, import_id bigint, source text)
language sql stable rows 1000 set jit = off as $$
    with scope as materialized (
        select s.location_id from location_subtree(root) s where root is not null
    ),
    superseded as materialized (
        select f.id, f.as_of, a.location_id
        from book_imports f join location_ancestry a on a.ancestor_id = f.complete_for
        where f.complete_for is not null
    )
    select distinct on (b.gtin, b.location_id)
        b.gtin, b.location_id, b.quantity, b.as_of, b.import_id, i.source
    from book_lines b
    join book_imports i on i.id = b.import_id
    where (root is null or b.location_id in (select s.location_id from scope s))
      and not exists (
          select 1 from superseded s
          where s.location_id = b.location_id and (s.as_of, s.id) > (b.as_of, b.import_id)
      )
    order by b.gtin, b.location_id, b.as_of desc, b.import_id desc
$$;

create view inventory_book as
select gtin, location_id, quantity, as_of, import_id, source from book_current(null);

-- ----------------------------------------------------------------------------------------------------
-- Observed and book quantities per GTIN at every location, each location counting what is inside it (a zone
-- holds its shelves' items): both sides are rolled up the same way, so an ERP that books per bin and one that
-- books per zone both compare like with like. Observed = items the presence resolver says are present now.
create view inventory_on_hand as
with direct as (
    select s.location_id, i.gtin, count(*) as units, min(s.since) as oldest_since
    from item_state s
    join items i on i.epc = s.epc
    where s.status = 'present' and s.location_id is not null and i.gtin is not null
    group by s.location_id, i.gtin
)
select
    a.ancestor_id                                                as location_id,
    l.site_id,
    d.gtin,
    sum(d.units)::bigint                                         as observed_units,
    coalesce(sum(d.units) filter (where a.depth = 0), 0)::bigint as direct_units,
    min(d.oldest_since)                                          as oldest_since
from direct d
join location_ancestry a on a.location_id = d.location_id
join locations l on l.id = a.ancestor_id
group by a.ancestor_id, l.site_id, d.gtin;

create view inventory_book_rollup as
select
    a.ancestor_id             as location_id,
    l.site_id,
    b.gtin,
    sum(b.quantity)::bigint   as book_units,
    max(b.as_of)              as book_as_of
from inventory_book b
join location_ancestry a on a.location_id = b.location_id
join locations l on l.id = a.ancestor_id
group by a.ancestor_id, l.site_id, b.gtin;

-- variance_units = observed - book; variance_pct = (observed - book) / book * 100, measured against the book
-- because the book is the reference the business plans with; null when the book says 0 (any stock found is
-- then an unbounded variance: read variance_units).
create view inventory_variance as
select
    coalesce(o.location_id, b.location_id)                      as location_id,
    coalesce(o.site_id, b.site_id)                              as site_id,
    coalesce(o.gtin, b.gtin)                                    as gtin,
    coalesce(o.observed_units, 0)                               as observed_units,
    coalesce(b.book_units, 0)                                   as book_units,
    coalesce(o.observed_units, 0) - coalesce(b.book_units, 0)   as variance_units,
    case when b.book_units > 0 then
        100.0 * (coalesce(o.observed_units, 0) - b.book_units) / b.book_units
    end::double precision                                       as variance_pct,
    b.book_as_of
from inventory_on_hand o
full join inventory_book_rollup b on b.location_id = o.location_id and b.gtin = o.gtin;

-- Stock accuracy per location, over its GTIN records (each rolled up to that location):
--   accuracy_pct        = (1 - sum |observed - book| / sum book) * 100, floored at 0: the unit-based inventory
--                         accuracy of the CSCMP glossary (Vitasek, "Supply Chain Management Terms and
--                         Glossary") and Piasecki ("Inventory Accuracy: People, Processes & Technology");
--                         null when the book holds nothing there.
--   record_accuracy_pct = records whose observed equals the book / records * 100: APICS inventory record
--                         accuracy (the share of SKU-location records that are right).
-- Misplacement between two shelves of one zone counts at the shelves, not at the zone: each level of the
-- hierarchy is judged at its own granularity.
create view stock_accuracy as
select
    location_id,
    site_id,
    count(*)::bigint                                            as records,
    count(*) filter (where variance_units = 0)::bigint          as records_exact,
    sum(observed_units)::bigint                                 as observed_units,
    sum(book_units)::bigint                                     as book_units,
    sum(abs(variance_units))::bigint                            as absolute_variance_units,
    case when sum(book_units) > 0 then
        greatest(0.0, 1.0 - sum(abs(variance_units))::double precision / sum(book_units)) * 100.0
    end                                                         as accuracy_pct,
    (100.0 * count(*) filter (where variance_units = 0) / count(*))::double precision as record_accuracy_pct
from inventory_variance
group by location_id, site_id;

-- Observed and book at one location (rolled up), for the API: starts from the location's subtree and the
-- item_state_location index instead of rolling up every location as the views do.
create function location_inventory(root text)
returns table (gtin text, observed_units bigint, book_units bigint, book_as_of timestamptz)
language sql stable set jit = off as $$
    with subtree as materialized (select location_id from location_subtree(root)),
    observed as (
        select i.gtin, count(*)::bigint as units
        from item_state s join items i on i.epc = s.epc
        where s.location_id in (select location_id from subtree)
          and s.status = 'present' and i.gtin is not null
        group by i.gtin
    ),
    book as (
        select b.gtin, sum(b.quantity)::bigint as units, max(b.as_of) as as_of
        from book_current(root) b
        group by b.gtin
    )
    select coalesce(o.gtin, b.gtin), coalesce(o.units, 0), coalesce(b.units, 0), b.as_of
    from observed o full join book b on b.gtin = o.gtin
    order by 1
$$;

-- ----------------------------------------------------------------------------------------------------
-- A cycle count: a named read window over a location. While it is open the readers do the counting; when it
-- finishes, each GTIN's result is kept: observed = items present in the location (or inside it) that were
-- read during the window, book = the book at that moment, unread = items the state places there that no
-- reader confirmed during the window (candidates for missing stock).
create table cycle_counts (
    id           bigint      generated always as identity primary key,
    name         text        not null,
    location_id  text        not null,
    started_at   timestamptz not null,
    ended_at     timestamptz,
    status       text        not null default 'open' check (status in ('open', 'finished')),
    created_at   timestamptz not null default now(),
    check ((status = 'finished') = (ended_at is not null)),
    check (ended_at is null or ended_at >= started_at)
);
create index cycle_counts_location on cycle_counts (location_id, started_at desc);

create table cycle_count_results (
    count_id        bigint  not null references cycle_counts (id) on delete cascade,
    gtin            text    not null,
    observed_units  integer not null,
    book_units      integer not null,
    unread_units    integer not null,
    primary key (count_id, gtin)
);

create view cycle_count_summary as
select
    c.id, c.name, c.location_id, c.started_at, c.ended_at, c.status,
    count(r.gtin)::bigint                                           as records,
    count(r.gtin) filter (where r.observed_units = r.book_units)::bigint as records_exact,
    coalesce(sum(r.observed_units), 0)::bigint                      as observed_units,
    coalesce(sum(r.book_units), 0)::bigint                          as book_units,
    coalesce(sum(r.unread_units), 0)::bigint                        as unread_units,
    case when sum(r.book_units) > 0 then
        greatest(0.0, 1.0 - sum(abs(r.observed_units - r.book_units))::double precision / sum(r.book_units)) * 100.0
    end                                                             as accuracy_pct
from cycle_counts c
left join cycle_count_results r on r.count_id = c.id
group by c.id;
