"""The plugin's own database: models, migrations and the functions that read and write it."""
