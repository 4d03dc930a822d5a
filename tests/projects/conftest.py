"""Template projects that tests copy into temporary directories and run there, each with its own
pytest configuration: never collected as part of this repository's suite."""

collect_ignore = ["inventory", "shop"]
