import pytest

from bpfpm.topology import Link, TopoSpec


def test_each_link_is_its_own_subnet():
    t = TopoSpec.simple(3)
    assert t.addrs("client") == ["10.0.1.1", "10.0.2.1", "10.0.3.1"]
    assert t.addr("server", 2, 6) == "fd00:2::2"
    assert t.link_of("10.0.3.2") == 3
    assert t.link_of("fd00:2::1") == 2


def test_link_count_is_bounded():
    with pytest.raises(ValueError):
        TopoSpec.simple(0)
    with pytest.raises(ValueError):
        TopoSpec.simple(5)


def test_spec_round_trips_through_json_dict():
    t = TopoSpec(links=(Link(delay_ms=5), Link(rate_mbit=10, loss_pct=1)), ipv6=False)
    assert TopoSpec.from_dict(t.to_dict()) == t
    assert t.links[1].shaped() and not Link().shaped()


def test_simple_applies_shaping_to_every_link():
    t = TopoSpec.simple(2, rate_mbit=20, ipv4=False)
    assert all(link.rate_mbit == 20 for link in t.links)
    assert not t.ipv4
