"""Pure domain: no I/O, no drivers. UIDs, storage layout, records, messages."""
