"""Layer 0: errors, clock, units, events, settings, file-system helpers; imports nothing else of dsmirror."""
