"""The experiment pipeline: stage settings, stages, cache, candidate runs, reproduce."""
