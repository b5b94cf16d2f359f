"""Backbones x layers x pooling x views x heads on one folder: the sweep and its leaderboard."""
