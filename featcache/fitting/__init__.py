"""Feature set -> run: parameters, splits, grid search, scoring, run folders, their reports, and prediction."""
