-- What the Grafana dashboards (dashboards/boards/) read beyond the tracking views: a lot's temperature exposure
-- over a time range, with its mean kinetic temperature, and the reorder points behind the low-stock table.

-- ----------------------------------------------------------------------------------------------------
-- A lot's temperature exposure between since and until: where its items were (item_location_intervals), as the
-- sensors that speak for those places (location_sensors), merged per sensor into the times when any item of the
-- lot was under it, against that sensor's temperature samples. Each sample holds until the sensor's next one,
-- for at most max_hold (15 minutes, as tracking/condition.py: a sensor's default inactivity timeout), so every
-- figure is time-weighted and a silent sensor's gap counts in none.
--
-- Samples are summed per sensor and hour first, and a lot takes the share of each hour it was there: every
-- lot kept in a room sees the same samples, and joining each sample with each lot would cost samples × lots. A
-- lot that arrived at 10:20 gets two thirds of the 10:00 hour's sums; minimum and maximum are the whole hour's.
--
-- mean_kinetic_c is USP <1079.2> / ICH Q1A(R2) mean kinetic temperature with ΔH/R = 83.144 kJ/mol / 8.3144
-- J/(mol·K) = 10 000 K, time-weighted:  MKT = 10000 / -ln( Σ wᵢ·exp(-10000 / Tᵢ) / Σ wᵢ ),  Tᵢ in kelvin.
-- above_s and below_s are the seconds beyond the SKU's range (skus.temperature_*_c); a side without a limit
-- counts none. The lot is taken as one load: a sample counts once however many of the lot's items, on however
-- many shelves under the sensor, were there. tracking/condition.py (the API) gives each item's own figures over
-- its whole history instead.
create function lot_temperature_exposure(
    since timestamptz, until timestamptz, max_hold interval default interval '15 minutes'
)
returns table (
    lot text, gtin text, items bigint, covered_s double precision,
    minimum_c double precision, maximum_c double precision, mean_c double precision,
    mean_kinetic_c double precision, above_s double precision, below_s double precision,
    temperature_min_c double precision, temperature_max_c double precision
)
-- Hash joins: the CTEs' row counts are unknown to the planner, which otherwise picks nested loops over them.
language sql stable set jit = off set enable_nestloop = off as $$
    with stays as materialized (
        select i.lot, i.gtin, s.epc, s.location_id,
               greatest(s.from_at, since)                          as from_at,
               least(coalesce(s.until_at, until), until)          as until_at
        from item_location_intervals s
        join items i on i.epc = s.epc
        where i.lot is not null and s.from_at < until and coalesce(s.until_at, 'infinity') > since
    ),
    lot_items as materialized (
        select s.lot, coalesce(min(l.gtin), min(s.gtin)) as gtin, count(distinct s.epc) as items
        from stays s left join lots l on l.lot = s.lot
        group by s.lot
    ),
    -- Each stay becomes the sensors that speak for its location (the shelf's own, else its zone's or room's):
    -- what counts is when the lot was under which sensor, so eight shelves under one zone sensor count it once.
    sensed as (
        select st.lot, ls.device_id, st.from_at, st.until_at
        from stays st
        join location_sensors ls on ls.location_id = st.location_id
    ),
    ordered as (
        select lot, device_id, from_at, until_at,
               max(until_at) over (partition by lot, device_id order by from_at, until_at
                                   rows between unbounded preceding and 1 preceding) as reached
        from sensed
    ),
    islands as (
        select lot, device_id, from_at, until_at,
               count(*) filter (where reached is null or reached < from_at)
                   over (partition by lot, device_id order by from_at, until_at rows unbounded preceding) as island
        from ordered
    ),
    presence as materialized (
        select lot, device_id, min(from_at) as from_at, max(until_at) as until_at
        from islands
        group by lot, device_id, island
    ),
    lot_bands as materialized (
        select g.lot, k.temperature_min_c, k.temperature_max_c,
               coalesce(k.temperature_min_c::text, '') || '/' || coalesce(k.temperature_max_c::text, '') as band
        from lot_items g
        left join skus k on k.gtin = g.gtin
    ),
    device_bands as materialized (
        select distinct p.device_id, b.band, b.temperature_min_c, b.temperature_max_c
        from presence p
        join lot_bands b on b.lot = p.lot
    ),
    samples as (
        select t.device_id, t.observed_at, t.value as temperature_c,
               extract(epoch from least(lead(t.observed_at) over (partition by t.device_id order by t.observed_at),
                                        t.observed_at + max_hold, until) - t.observed_at)::double precision as held_s
        from telemetry t
        where t.quantity = 'temperature_c' and t.observed_at >= since and t.observed_at < until
          and t.value > -273.15 and t.device_id in (select device_id from presence)
    ),
    hourly as materialized (
        select s.device_id, date_trunc('hour', s.observed_at) as hour, b.band,
               sum(s.held_s)                                                        as held_s,
               sum(s.held_s * s.temperature_c)                                      as weighted_c,
               sum(s.held_s * exp(-10000.0 / (s.temperature_c + 273.15)))          as weighted_arrhenius,
               min(s.temperature_c)                                                 as minimum_c,
               max(s.temperature_c)                                                 as maximum_c,
               coalesce(sum(s.held_s) filter (where s.temperature_c > b.temperature_max_c), 0) as above_s,
               coalesce(sum(s.held_s) filter (where s.temperature_c < b.temperature_min_c), 0) as below_s
        from samples s
        join device_bands b on b.device_id = s.device_id
        where s.held_s > 0
        group by 1, 2, 3
    ),
    presence_hours as materialized (
        select p.lot, b.band, p.device_id, h.hour,
               extract(epoch from least(p.until_at, h.hour + interval '1 hour') - greatest(p.from_at, h.hour))
                   / 3600.0 as share
        from presence p
        join lot_bands b on b.lot = p.lot
        cross join lateral generate_series(date_trunc('hour', p.from_at), p.until_at, interval '1 hour') as h(hour)
        where h.hour < p.until_at
    ),
    exposure as (
        select ph.lot, sum(ph.share * x.held_s) as held_s, sum(ph.share * x.weighted_c) as weighted_c,
               sum(ph.share * x.weighted_arrhenius) as weighted_arrhenius, min(x.minimum_c) as minimum_c,
               max(x.maximum_c) as maximum_c, sum(ph.share * x.above_s) as above_s,
               sum(ph.share * x.below_s) as below_s
        from presence_hours ph
        join hourly x on x.device_id = ph.device_id and x.hour = ph.hour and x.band = ph.band
        where ph.share > 0
        group by ph.lot
    )
    select e.lot, g.gtin, g.items, e.held_s, e.minimum_c, e.maximum_c, e.weighted_c / e.held_s,
           10000.0 / -ln(e.weighted_arrhenius / e.held_s) - 273.15,
           e.above_s, e.below_s, b.temperature_min_c, b.temperature_max_c
    from exposure e
    join lot_items g on g.lot = e.lot
    join lot_bands b on b.lot = e.lot
    where e.held_s > 0
$$;

-- ----------------------------------------------------------------------------------------------------
-- Reorder points per location and GTIN, from the last 28 whole days of consumption (consumption_daily_rollup,
-- as days_of_inventory), for the low-stock table:
--   reorder_point_units  = demand over the lead time + safety stock, where
--                          demand over the lead time = average daily units × lead_time_days and
--                          safety stock = z × σ(daily units) × √lead_time_days with z = 1.645 (a 95 % cycle
--                          service level; Silver, Pyke & Thomas, "Inventory and Production Management in Supply
--                          Chains", 4th ed., §6.7); days without consumption count as 0 in σ.
--                          skus.reorder_minimum_units, when set, is the reorder point instead.
--   economic_order_units = EOQ = √(2 · annual demand · order_cost / (unit_cost · holding_cost_rate)) (Harris;
--                          same book §4.2), null without the costs.
--   suggested_order_units = the larger of the EOQ and what brings the stock back above the reorder point.
create view inventory_reorder_points as
with window_days as (select 28 as days, (now() at time zone 'UTC')::date as today),
demand as (
    select r.location_id, r.gtin,
           sum(r.units)::double precision / w.days                                         as average_daily_units,
           sqrt(greatest(0.0, (sum(r.units::double precision ^ 2) - sum(r.units)::double precision ^ 2 / w.days)
                              / (w.days - 1)))                                           as daily_units_stddev
    from consumption_daily_rollup r, window_days w
    where r.day >= w.today - w.days and r.day < w.today
    group by r.location_id, r.gtin, w.days
),
points as (
    select coalesce(o.location_id, d.location_id)                           as location_id,
           coalesce(o.gtin, d.gtin)                                         as gtin,
           coalesce(o.observed_units, 0)                                    as on_hand_units,
           coalesce(d.average_daily_units, 0)                               as average_daily_units,
           k.name, k.lead_time_days, k.reorder_minimum_units,
           case
               when k.reorder_minimum_units is not null then k.reorder_minimum_units::double precision
               when k.lead_time_days is not null then
                   coalesce(d.average_daily_units, 0) * k.lead_time_days
                   + 1.645 * coalesce(d.daily_units_stddev, 0) * sqrt(k.lead_time_days)
           end                                                              as reorder_point_units,
           case when k.order_cost > 0 and k.unit_cost > 0 and k.holding_cost_rate > 0 and d.average_daily_units > 0
               then sqrt(2.0 * d.average_daily_units * 365.0 * k.order_cost / (k.unit_cost * k.holding_cost_rate))
           end                                                              as economic_order_units
    from inventory_on_hand o
    full join demand d on d.location_id = o.location_id and d.gtin = o.gtin
    join skus k on k.gtin = coalesce(o.gtin, d.gtin)
)
select p.location_id, l.site_id, p.gtin, p.name, p.on_hand_units, p.average_daily_units, p.lead_time_days,
       p.reorder_point_units, p.economic_order_units,
       case when p.average_daily_units > 0 then p.on_hand_units / p.average_daily_units end as days_of_inventory,
       p.on_hand_units <= p.reorder_point_units                                           as below_reorder_point,
       case when p.on_hand_units <= p.reorder_point_units then
           ceil(greatest(coalesce(p.economic_order_units, 0), p.reorder_point_units - p.on_hand_units + 1))::bigint
       end                                                                                 as suggested_order_units
from points p
join locations l on l.id = p.location_id;
