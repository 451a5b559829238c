"""The policy file: defaults, validation errors that name the key, path rules."""

from __future__ import annotations

import pytest

from darkfactory.policy import Policy, PolicyError, matches, parse_policy


def test_no_policy_file_means_the_defaults() -> None:
    policy = parse_policy(None)
    assert policy == Policy()
    assert policy.escalation.on_caps_spent == "escalate" and policy.escalation.default_action == "reject"
    assert policy.rules_for("test").allow_test_edits and not policy.rules_for("feature").allow_test_edits


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[limits]\nmax_atempts = 3\n", "limits.max_atempts: Extra inputs are not permitted"),
        ("[limits]\nmax_diff_lines = 'lots'\n", "limits.max_diff_lines"),
        ("[escalation]\ndefault_action = 'merge'\n", "escalation.default_action"),
        ("gates = ['syntax', 'vibes']\n", "gates.1"),
        ("[task_types.chore]\nallowed = ['**']\n", "task_types.chore"),
        ("colour = 'blue'\n", "colour: Extra inputs are not permitted"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_key(text: str, named: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_policy(text)
    assert ".factory/policy.toml" in str(error.value) and named in str(error.value)


def test_a_policy_that_is_not_toml_says_so() -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy("[limits\n")


def test_commands_may_be_strings_or_argv() -> None:
    text = '[commands]\nsetup = ["pip install -e \'.[test]\'", ["make", "deps"]]\ntest = "pytest -q -x"\n'
    policy = parse_policy(text)
    assert policy.commands.setup == [["pip", "install", "-e", ".[test]"], ["make", "deps"]]
    assert policy.commands.test == ["pytest", "-q", "-x"]


def test_ci_config_and_the_policy_itself_are_always_protected() -> None:
    policy = parse_policy('protected = ["db/migrations/**"]\n')
    for path in (".factory/policy.toml", ".github/workflows/ci.yml", ".ci/run", "db/migrations/0001.sql"):
        assert policy.is_protected(path), path
    assert not policy.is_protected("src/app.py")


def test_double_star_globs_match_at_any_depth_including_the_top() -> None:
    assert matches("test_x.py", ["**/test_*.py"]) and matches("a/b/test_x.py", ["**/test_*.py"])
    assert not matches("src/x.py", ["docs/**"])


def test_a_policy_cannot_switch_off_the_scope_and_secrets_gates() -> None:
    # Without them a repository's policy could merge a CI workflow or a credential with no one asked.
    policy = parse_policy('gates = ["tests"]\n')
    assert policy.gates == ["scope", "secrets", "tests"]
