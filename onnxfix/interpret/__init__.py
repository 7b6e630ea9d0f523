"""Model-level views: relevant-filter interpretation, class impressions, activation and filter views (issue #6)."""
