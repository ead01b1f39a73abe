"""The qaas service and its command line: API, storage, auth, pages (the engine is qaas_engine)."""
