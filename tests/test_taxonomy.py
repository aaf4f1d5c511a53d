"""Taxonomy: car-name parsing on the 196 real Stanford Cars names, task lists, index maps, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scipy.io

from carcli.data.taxonomy import FINE, CarName, Taxonomy, parse_car_name
from carcli.errors import CarcliError

META = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars" / "devkit" / "cars_meta.mat"


@pytest.fixture(scope="module")
def real_names() -> list[str]:
    return [str(name) for name in scipy.io.loadmat(META, squeeze_me=True)["class_names"]]


def test_real_names_give_49_makes_and_18_body_types(real_names):
    assert len(real_names) == 196
    taxonomy = Taxonomy.from_class_names(real_names)
    assert taxonomy.task_names == ["model", "make", "type", "year"]
    assert taxonomy.tasks[FINE] == real_names
    assert len(taxonomy.tasks["make"]) == 49
    assert len(taxonomy.tasks["type"]) == 18
    assert "Other" in taxonomy.tasks["type"]
    assert set(taxonomy.tasks["year"]) == {name.split()[-1] for name in real_names}


def test_real_names_years_are_sorted_numerically(real_names):
    years = Taxonomy.from_class_names(real_names).tasks["year"]
    assert [int(y) for y in years] == sorted(int(y) for y in years)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AM General Hummer SUV 2000", CarName("AM General", "Hummer", "SUV", "2000")),
        (
            "Chevrolet Silverado 1500 Classic Extended Cab 2007",
            CarName("Chevrolet", "Silverado 1500 Classic", "Extended Cab", "2007"),
        ),
        ("Ram C/V Cargo Van Minivan 2012", CarName("Ram", "C/V Cargo Van", "Minivan", "2012")),
        ("Acura TL Type-S 2008", CarName("Acura", "TL Type-S", "Other", "2008")),
        ("Aston Martin V8 Vantage Coupe 2012", CarName("Aston Martin", "V8 Vantage", "Coupe", "2012")),
        ("Land Rover LR2 SUV 2012", CarName("Land Rover", "LR2", "SUV", "2012")),
        ("Ford E-Series Wagon Van 2012", CarName("Ford", "E-Series", "Wagon Van", "2012")),
        ("Chevrolet Express Van 2007", CarName("Chevrolet", "Express", "Van", "2007")),
        ("Ford Ranger SuperCab 2011", CarName("Ford", "Ranger", "SuperCab", "2011")),
        ("Volvo 240 Sedan 1993", CarName("Volvo", "240", "Sedan", "1993")),
    ],
)
def test_parse_car_name(name, expected):
    assert parse_car_name(name) == expected


@pytest.mark.parametrize("name", ["cat", "striped", "Ford 2012", "Ford Focus", "Ford Focus Sedan 1850", "a b 12345"])
def test_non_car_names_do_not_parse(name):
    assert parse_car_name(name) is None


def test_body_type_needs_a_model_word_before_it():
    assert parse_car_name("Ford Van 2012") == CarName("Ford", "Van", "Other", "2012")


def test_fine_to_maps_each_fine_class_to_its_parsed_coarse_classes(real_names):
    taxonomy = Taxonomy.from_class_names(real_names)
    for task in ("make", "type", "year"):
        assert len(taxonomy.fine_to[task]) == len(real_names)
    for i, name in enumerate(real_names):
        car = parse_car_name(name)
        assert car is not None
        targets = taxonomy.targets(i)
        assert targets[FINE] == i
        assert taxonomy.tasks["make"][targets["make"]] == car.make
        assert taxonomy.tasks["type"][targets["type"]] == car.body_type
        assert taxonomy.tasks["year"][targets["year"]] == name.split()[-1]


def test_round_trip_through_json(real_names):
    taxonomy = Taxonomy.from_class_names(real_names)
    again = Taxonomy.from_dict(json.loads(json.dumps(taxonomy.to_dict())))
    assert again == taxonomy
    assert again.task_names == taxonomy.task_names


def test_plain_names_give_only_the_fine_task():
    taxonomy = Taxonomy.from_class_names(["striped", "cat", "dotted"])
    assert taxonomy.task_names == ["model"]
    assert taxonomy.tasks == {"model": ["striped", "cat", "dotted"]}
    assert taxonomy.fine_to == {}
    assert taxonomy.targets(1) == {"model": 1}
    assert Taxonomy.from_dict(json.loads(json.dumps(taxonomy.to_dict()))) == taxonomy


def test_one_plain_name_drops_all_coarse_tasks():
    taxonomy = Taxonomy.from_class_names(["Audi S4 Sedan 2012", "BMW X3 SUV 2011", "unknown"])
    assert taxonomy.task_names == ["model"]


def test_coarse_task_with_one_class_is_dropped():
    taxonomy = Taxonomy.from_class_names(["Audi S4 Sedan 2012", "Audi A5 Sedan 2010", "Audi TT Sedan 2012"])
    assert taxonomy.task_names == ["model", "year"]
    assert taxonomy.tasks["year"] == ["2010", "2012"]
    assert taxonomy.fine_to == {"year": [1, 0, 1]}
    assert taxonomy.targets(1) == {"model": 1, "year": 0}


def test_all_other_body_types_drop_the_type_task():
    taxonomy = Taxonomy.from_class_names(["Acura TL Type-S 2008", "Chevrolet Cobalt SS 2010"])
    assert taxonomy.task_names == ["model", "make", "year"]


def test_targets_rejects_out_of_range_labels():
    taxonomy = Taxonomy.from_class_names(["a", "b"])
    with pytest.raises(ValueError):
        taxonomy.targets(2)
    with pytest.raises(ValueError):
        taxonomy.targets(-1)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tasks": {"make": ["A"]}, "fine_to": {}},
        {"tasks": {"model": ["a", "b"], "make": ["A"]}, "fine_to": {}},
        {"tasks": {"model": ["a", "b"], "make": ["A"]}, "fine_to": {"make": [0]}},
        {"tasks": {"model": ["a", "b"], "make": ["A"]}, "fine_to": {"make": [0, 1]}},
    ],
)
def test_from_dict_rejects_malformed_data(data):
    with pytest.raises(CarcliError, match="taxonomy is malformed"):
        Taxonomy.from_dict(data)
