"""The roster as users write it: `--model NAME=URL[,URL...]` and RSTAR_MODELS, replicas included."""

from __future__ import annotations

import re

import pytest

from rstar.roster import RosterError, build_roster, describe, parse_model_spec, parse_models_env, urls_of


def test_a_model_with_replicas_keeps_its_first_url_as_its_url() -> None:
    entry = parse_model_spec("A=http://gpu1:8000,http://gpu2:8000/")
    assert entry.url == "http://gpu1:8000"
    assert entry.urls == ("http://gpu1:8000", "http://gpu2:8000/")
    assert entry.as_json() == {
        "name": "A",
        "url": "http://gpu1:8000",
        "replicas": ["http://gpu1:8000", "http://gpu2:8000/"],
    }


def test_a_single_url_is_stored_as_before() -> None:
    assert parse_model_spec("B=http://gpu3:8000").as_json() == {"name": "B", "url": "http://gpu3:8000"}


def test_rstar_models_continues_a_model_with_a_url_without_a_name() -> None:
    roster = parse_models_env("A=http://gpu1:8000, http://gpu2:8000,B=http://gpu3:8000,C=http://gpu1:8000")
    assert [(m.name, m.urls) for m in roster] == [
        ("A", ("http://gpu1:8000", "http://gpu2:8000")),
        ("B", ("http://gpu3:8000",)),
        ("C", ("http://gpu1:8000",)),  # the discriminator on one of A's replicas
    ]
    assert len(build_roster(roster)) == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("A=http://gpu1:8000,http://gpu1:8000/", "given twice"),
        ("A=http://gpu1:8000,ftp://gpu2", "not an http(s) URL"),
        ("A=http://gpu1:8000,http://gpu2:8000/?x=1", "query or a fragment"),
    ],
)
def test_bad_replicas_are_refused_naming_the_model(spec: str, message: str) -> None:
    with pytest.raises(RosterError, match=re.escape(message)) as caught:
        parse_model_spec(spec)
    assert "--model A" in str(caught.value)


def test_a_stored_roster_names_every_replica() -> None:
    stored = [m.as_json() for m in parse_models_env("A=http://g1:1,http://g2:1,http://g3:1,B=http://g4:1")]
    assert urls_of(stored, "A") == ("http://g1:1", "http://g2:1", "http://g3:1")
    assert urls_of(stored, "B") == ("http://g4:1",)
    assert urls_of(stored, None) == ()
    assert [describe(m) for m in stored] == ["A http://g1:1 (+2 replicas)", "B http://g4:1"]
