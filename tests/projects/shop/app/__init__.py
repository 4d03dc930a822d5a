"""The shop's own application package: a top-level `app`, as many projects have."""
