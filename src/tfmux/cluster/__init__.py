"""tfmux on Ray Serve: replicas that each run a tfmux core, a gateway with tfmux's own front
ends, and residency routing (see docs/cluster.md). Needs the ``ray`` extra; nothing outside
this package and ``tfmux.ray`` imports Ray."""
