"""Checks on lss_concepts.json: the LSS label lists and hand-written class descriptions."""
import json
import re
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "lss_concepts.json"


@pytest.fixture(scope="module")
def data():
    with open(PATH, encoding="utf-8") as f:
        return json.load(f)


def test_structure(data):
    assert set(data) == {"_about", "labels", "descriptions"}
    assert isinstance(data["_about"], str) and data["_about"]
    assert set(data["labels"]) == {"synthetic", "ucf101", "hmdb51", "kinetics400"}


@pytest.mark.parametrize("name,n", [("synthetic", 8), ("ucf101", 101), ("hmdb51", 51), ("kinetics400", 400)])
def test_label_counts_unique(data, name, n):
    labels = data["labels"][name]
    assert len(labels) == n
    assert len(set(labels)) == n
    assert all(isinstance(x, str) and x == x.strip() and x for x in labels)


def test_synthetic_order(data):
    assert data["labels"]["synthetic"] == [
        "static", "move_sideways", "move_up", "move_down", "rotate", "grow", "shrink", "orbit"]


def test_ucf101_classind_order(data):
    ucf = data["labels"]["ucf101"]
    assert ucf[0] == "ApplyEyeMakeup" and ucf[100] == "YoYo"
    # classInd.txt sorts case-insensitively: 35 Hammering, 36 HammerThrow, 47 JumpingJack, 48 JumpRope (1-based).
    assert ucf.index("Hammering") == 34 and ucf.index("HammerThrow") == 35
    assert ucf.index("JumpingJack") == 46 and ucf.index("JumpRope") == 47
    assert ucf.index("HandstandPushups") == 36 and ucf.index("WritingOnBoard") == 99
    assert ucf == sorted(ucf, key=str.lower)


def test_hmdb51_sorted(data):
    hmdb = data["labels"]["hmdb51"]
    assert hmdb == sorted(hmdb)
    assert hmdb[0] == "brush_hair" and hmdb[-1] == "wave"
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", x) for x in hmdb)


def test_kinetics400_spot_checks(data):
    k = data["labels"]["kinetics400"]
    assert k[0] == "abseiling" and k[1] == "air drumming" and k[-1] == "zumba"
    assert k[148] == "hammer throw"
    assert k[208] == "passing American football (in game)"
    assert "massaging person's head" in k and "skiing (not slalom or crosscountry)" in k
    assert k == sorted(k, key=str.lower)


def _check_descs(descs):
    assert isinstance(descs, list) and len(descs) >= 3
    for d in descs:
        assert isinstance(d, str) and d.strip() and len(d) < 120


@pytest.mark.parametrize("name", ["synthetic", "ucf101", "hmdb51"])
def test_descriptions_complete(data, name):
    for label in data["labels"][name]:
        assert label in data["descriptions"], label
        _check_descs(data["descriptions"][label])


def test_description_keys_are_labels(data):
    all_labels = set().union(*map(set, data["labels"].values()))
    assert set(data["descriptions"]) <= all_labels
    for descs in data["descriptions"].values():
        _check_descs(descs)


def test_kinetics400_coverage_matches_about(data):
    covered = [k for k in data["labels"]["kinetics400"] if k in data["descriptions"]]
    m = re.search(r"(\d+) of 400 Kinetics-400 classes", data["_about"])
    assert m, "_about must state the Kinetics-400 coverage"
    assert len(covered) == int(m.group(1))
    print(f"Kinetics-400 classes with descriptions: {len(covered)}/400")
