"""The config's values are checked in one place (catkd_jax/validation.py): every enumerated,
count and list field refuses a value no code path takes, naming the field; every config file of
configs/ passes."""

from __future__ import annotations

import re

import pytest

from catkd_jax import config_files, default_config, validation
from catkd_jax.errors import ConfigError
from conftest import REPO_ROOT


def _with(field: str, value):
    return config_files.with_values(default_config.get_config(), {field: value})


@pytest.mark.parametrize("field", sorted(validation.CHOICES))
def test_an_enumerated_field_takes_its_names_only(field):
    for choice in validation.CHOICES[field]:
        validation.check_config(_with(field, choice))
    with pytest.raises(ConfigError, match=rf"^config\.{re.escape(field)}='nonsense' is unknown; use one of "
                                          f"{re.escape(', '.join(validation.CHOICES[field]))}$"):
        validation.check_config(_with(field, "nonsense"))


@pytest.mark.parametrize("field", sorted(validation.MINIMUMS))
def test_a_count_is_an_integer_at_least_its_minimum(field):
    minimum = validation.MINIMUMS[field]
    validation.check_config(_with(field, minimum))
    for bad in (minimum - 1, float(minimum), True):
        with pytest.raises(ConfigError, match=rf"^config\.{re.escape(field)} must be an integer >= {minimum}, got "):
            validation.check_config(_with(field, bad))


@pytest.mark.parametrize("field", sorted(validation.INTEGER_SEQUENCES))
def test_seeds_and_epochs_are_sequences_of_integers(field):
    minimum, _ = validation.INTEGER_SEQUENCES[field]
    validation.check_config(_with(field, (minimum, minimum + 1)))
    validation.check_config(_with(field, []))  # a record holds a JSON list
    for bad in (("abc",), (minimum - 1,), (1.5,), "5"):
        with pytest.raises(ConfigError, match=rf"^config\.{re.escape(field)} must be a tuple of integers >= {minimum}"):
            validation.check_config(_with(field, bad))


def test_an_unknown_data_set_is_refused_but_for_the_shapes_source_that_ignores_it():
    with pytest.raises(ConfigError, match=r"^config\.data\.name='cifar1000' is unknown; use one of cifar100, "):
        validation.check_config(_with("data.name", "cifar1000"))
    validation.check_config(config_files.with_values(default_config.get_config(),
                                                     {"data.name": "anything", "data.source": "shapes"}))


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("[!_]*.py")), ids=lambda path: path.stem)
def test_every_config_file_passes(path):
    validation.check_config(config_files.load_config(path))
