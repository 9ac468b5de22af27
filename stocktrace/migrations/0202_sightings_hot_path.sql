-- tag_sightings is upserted on the ingest hot path, and every index on it is written with every row. Nothing asks
-- it per location (what is at a location is answered by item_state, a location's clock by antenna_activity), so
-- this index only cost ingest about a third of the upsert's time.
drop index tag_sightings_location;

-- A portal pass ends when the tag has not been read at the portal for PORTAL_PASS_GAP_S, and a visit elsewhere
-- when it has not been read there for VISIT_GAP_S (tracking/policy.py): the two gaps differ.
comment on table portal_passes is
    'Per tag and portal: when each side saw the tag during the current pass (tracking/sightings.py).';
