"""Every tutorial program in examples/tutorials trains on hpctrain to the held-out metric that plain
Keras reached (examples/tutorials/reference.json, written by ``check.py --record``): accuracy
within 0.02, MAE/MSE within 15%."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("tutorials_check", os.path.join(REPO, "examples", "tutorials", "check.py"))
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)


@pytest.fixture(scope="module")
def reference():
    return check.load_reference()


def test_reference_covers_every_program(reference):
    assert sorted(reference["programs"]) == check.programs(), "run examples/tutorials/check.py --record"


@pytest.mark.parametrize("program", check.programs())
def test_program_matches_plain_keras(program, reference):
    expected = reference["programs"].get(program)
    assert expected is not None, f"{program} has no reference metric: run examples/tutorials/check.py --record"
    try:
        result = check.run_program(program, engine=True)
    except check.ProgramError as error:
        pytest.fail(str(error), pytrace=False)
    ok, detail = check.compare(result, expected)
    assert ok, (f"{program} on hpctrain: {result['metric']} = {result['value']:.4f}, plain Keras "
                f"(Keras {reference['keras_version']}) reached {expected['value']:.4f}; {detail}")
