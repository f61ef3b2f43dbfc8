"""Operating a lake over time: `vacuum_lake` (tagger.ops.vacuum) deletes what nothing needs."""
