"""A study stage's stamp key (`stages.stage_key`): written from its settings records by one
explicit function, the same bytes as the keys existing stores hold, the same in every process,
and another key when a setting that changes the result changes."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest

from ptdist.neurons.collect import CaptureSettings
from ptdist.orchestration.jobs import stages
from ptdist.orchestration.jobs.stages import stage_key
from ptdist.store import Store
from ptdist.transfer.matrix import MatrixSettings
from tests.conftest import REPO, child_env

IDS = ["b", "a"]



def matrix(**settings) -> str:
    store = Store("store")
    select = partial(stages._sources, store, "tiny-roberta", ("sst2", "imdb"), tuple(IDS))
    return stage_key("matrix tiny-roberta", IDS,
                     partial(stages._matrix, store, select, MatrixSettings(**settings)))


def capture(**settings) -> str:
    return stage_key("capture tiny-roberta", IDS,
                     partial(stages._capture, Store("store"), "tiny-roberta", tuple(IDS),
                             CaptureSettings(**settings)))


def test_the_keys_are_those_the_stamps_of_existing_stores_hold():
    """Measured at f715933, when the key was the json.dumps(default=str) of the stage's
    partial: a re-run of a study stored then finds its stamps."""
    assert matrix(eval_limit=48, ds_config="zero3") == \
        "59a2ed35997706accc34c896c5e70f13a128b6206f477f1888dc9433a73b00c9"
    assert capture(examples=16) == \
        "63e136ac993158317ad79467cb680c8bcdb5ff10126585a8bb58741c844857ea"
    assert stage_key("correlate tiny-roberta", IDS,
                     partial(stages._correlate, Store("store"), "tiny-roberta")) == \
        "6bc0e6992a42e605b3ce4f293784f14b8ea7067961dacb59764e6686ca58cb3c"


def test_a_key_changes_with_what_the_stage_computes_not_how_it_runs():
    base = matrix(eval_limit=48)
    assert matrix(eval_limit=49) != base and matrix(eval_limit=48, precision="bf16") != base
    assert capture(examples=16) != capture(examples=32)
    assert matrix(eval_limit=48, ds_config="zero3") == base  # how the model is partitioned


def test_a_key_is_the_same_in_another_process():
    code = ("from tests.test_stage_keys import capture, matrix\n"
            "print(matrix(eval_limit=48), capture(examples=16))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [matrix(eval_limit=48), capture(examples=16)]


def test_an_argument_without_a_stable_form_is_refused():
    """An object's str() may hold its address: a key built from it would never match again."""
    with pytest.raises(TypeError, match="no form for a object"):
        stage_key("x", IDS, partial(stages._correlate, object(), "tiny-roberta"))
    with pytest.raises(TypeError, match="no form for a object in a settings record"):
        stage_key("x", IDS, partial(stages._matrix, Store("store"), print,
                                    CaptureSettings(device=object())))
