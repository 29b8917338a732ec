"""Changes between configs: ``plan`` (the diff and its renderers) and ``impact`` (what a change does to each
live connection)."""
