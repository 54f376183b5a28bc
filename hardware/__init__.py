"""Hardware profiles: the schema every number of the cost model lives in (with units and
provenance), and the shipped presets. Shared by the simulator (which prices with a profile), the
real backends (whose calibration writes one) and the core (capacity checks)."""
