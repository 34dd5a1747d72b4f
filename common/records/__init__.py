"""The de-identified seizure record: its schema, reader and writer, and the model inputs built from it."""
