"""What a user sets, as typed records: the extraction settings, views recipes, decoding, and the fit defaults. No torch."""
