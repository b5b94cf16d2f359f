"""Pages people look at: Markdown/HTML blocks with user text kept apart from featcache's links, plots and thumbnails."""
