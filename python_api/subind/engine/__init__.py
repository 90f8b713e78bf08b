"""The generic driver engine: atomic files and locks, the results-directory
manifest, run records, the resumable and shardable sweep, training loops and
the discovery/transfer protocol.  Experiments (subind.experiments.*) supply
data, models and presets; nothing here knows about any one experiment."""
