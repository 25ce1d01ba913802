"""tests/dev: fixtures/ holds projects that `sandrun test` runs, not tests of sandrun."""

collect_ignore = ["fixtures"]
