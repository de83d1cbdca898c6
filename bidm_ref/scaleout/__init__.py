"""Scale-out over a Dask cluster (issue 21): `cli.py sample` and `cli.py eval` with `--workers K` or `--scheduler`.

cluster.py        the Dask client (a LocalCluster of K one-thread processes, or an existing scheduler), the
                  one-thread policy every task applies, and DaskMap, a ShardMap over the workers
sample_shards.py  sampling in seeded shards written as they finish, with a manifest, resumed by skipping
                  finished shards (eval's shards are metrics/evaluate.py's, run through DaskMap)

Dask is optional (`pip install -e '.[dist]'`) and imported only inside cluster.py's functions. README
"Sampling and evaluation on a Dask cluster" has the commands and the determinism statement.
"""
