"""Everything that runs per call: the session (state table + call tracking), the path chosen for
a module, the executor of the split program, the decision (middle, state, policy) and the
calibrators."""
