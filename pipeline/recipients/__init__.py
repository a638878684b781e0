"""Recipients: who may receive a result (the directory) and how we name them (identifiers)."""
