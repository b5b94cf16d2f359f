"""Images -> feature rows -> a feature set: folder scanning, decoding and crops, views, the local and Ray engines."""
