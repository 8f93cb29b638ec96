"""What runs around the pass: the demo, the coverage matrix over the zoo, metrics, and the CLI
(``python -m dit_cachepass``)."""
