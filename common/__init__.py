"""Code shared by every semiofed role: models, record schema, errors, files."""
