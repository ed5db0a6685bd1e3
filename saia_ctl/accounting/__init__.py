"""Accounting: monthly reports, job and request listings, retention (rollups + prune), metrics.

Queries here return rows and figures; ``saia_ctl/cli`` formats them. See
``docs/accounting.md`` for the definitions (month window, GPU-hours, attribution).
"""
