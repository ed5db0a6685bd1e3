from saia_ctl.settings import Settings


def test_home_fixture_is_migrated(settings: Settings, engine) -> None:
    from saia_ctl.migrate import current_revision, head_revision

    assert current_revision(engine) == head_revision()
    lo, hi = settings.port_range
    assert hi - lo == 49
