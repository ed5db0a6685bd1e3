"""The cloud side: ``saia-ctl proxy``, an OpenAI-compatible gateway over forced-command SSH.

Only ``server`` imports aiohttp; the other modules are standard library, so the
CLI (and the login nodes) never need the ``[proxy]`` extra.
"""
