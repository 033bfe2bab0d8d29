"""asv benchmark suites for numbanet; sizes and thread counts live in :mod:`.common`."""
