"""SQL migrations of the shadow-scoring table (services.registry._shadow), applied by services.database."""
