"""Feature sets on disk: the manifest of inputs, the id, staging of a running extraction, the HDF5 file and the cache folder."""
