"""`crash-bench`: the hot path's benchmark (issue 10, DESIGN section 14). Not a test.

It starts an isolated pipeline of its own on the test profile's Kafka, MariaDB and Redis (its own
topic prefix, consumer group, database, ports), drives it, and prints one table plus a JSON file
under var/bench/ with the change against the previous file. Every figure is measured in the same
run as the baselines it is compared with (a bare aiokafka loop, a bare signed aiohttp handler),
because on a 2-core machine shared by everything only ratios are stable.

Modules: deploy (the isolated pipeline and its processes' CPU times), load (the load generators,
run as their own processes so that their CPU is not the pipeline's), bare (the baselines),
runs (the measurements), watch (what they follow and wait for), stats (the arithmetic over their
figures, the rate search), report (table, JSON, comparison), cli (the command).
"""
