"""Journal: the store of a pull (preallocated files, the durable journal of verified pieces)."""
