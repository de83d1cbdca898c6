"""Scale-out over a Dask cluster (issue 21): `cli.py sample` and `cli.py eval` with `--workers K` or `--scheduler`.

cluster.py        the Dask client (a LocalCluster of K one-thread processes, or an existing scheduler), the
                  worker plugin that applies the thread policy, and DaskMap, a ShardMap over Dask workers
worker_policy.py  that plugin (imports distributed, so only loaded with Dask)
sample_shards.py  sampling in seeded shards written as they finish, with a manifest, resumed by skipping
                  finished shards

Dask is optional (`pip install -e '.[dist]'`); nothing outside this package imports it. README
"Sampling and evaluation on a Dask cluster" has the commands and the determinism statement.
"""
