"""The reproduction pipeline's edge: the CLI, the embedded tiny setup, tables, figures and notebook context."""
