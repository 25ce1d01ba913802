"""The developer loop: `sandrun dev`, `sandrun test` and the dependency matrix."""
