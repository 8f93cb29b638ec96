"""Graph in, graph out: capture -> regions -> match (+ streams, patterns) -> plan -> rewrite -> fold ->
lower (+ outline). One stage a module; each takes the previous stage's typed output."""
