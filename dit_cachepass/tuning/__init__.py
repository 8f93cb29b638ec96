"""dcp.tune's parts: observe a generation, simulate DBCache on it, replay a checked forecast,
plan a static schedule, and the report."""
