"""Ray Data batch jobs: score a manifest, or extract its encoder features, on any Ray cluster.

    python -m jobs score    --manifest M --bundle B --out predictions.parquet
    python -m jobs features --manifest M --bundle B --out features.parquet

A manifest is JSONL or CSV with columns ``id,text,audio_path[,split,label,score]``, read
by ``model.data.manifest`` in its lenient mode; audio paths are relative to the manifest.
Each row is treated exactly like one HTTP request (``jobs.stages``), and a bad row is
recorded with its error, never stopping the job.

The output is a folder of Parquet shards (``jobs.tables``), each written to a temporary
name and renamed when complete. A rerun with the same ``--out`` skips every id already in
a complete shard, so an interrupted job resumes where it stopped (``jobs.run``).

Modules: ``cli`` (command line), ``run`` (the pipeline), ``stages`` (its Ray Data stages),
``tables`` (output schemas and shards).
"""
