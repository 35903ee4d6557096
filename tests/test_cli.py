"""The command line is generated from one table (pipeline.cli.COMMANDS).

Every shell command the workflow plans parses; every option that stands for a config key
defaults to the key's schema default and receives the configured value; every option is
added in one place.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.config import default_config, validate_config
from tests.conftest import REPO, SMALL_OVERLAY, snakemake

#: The configurations whose planned commands are parsed: the default (embedded demo, tiny
#: preset), the paper preset, and the paper preset with the diffusers unCLIP generator and
#: a folder of reconstructions made elsewhere (distinct batch sizes and seeds, so that an
#: option reading the wrong key shows).
CONFIGS = {
    "tiny": {},
    "paper": {"models": {"preset": "paper"}},
    "paper-sd21": {
        "models": {"preset": "paper", "tiny_seed": 3},
        "keyframes": {"generator": "sd21_unclip", "batch_size": 5},
        "evaluation": {"external": {"peer": {"path": "peer"}}, "batch_size": 7},
        "semantic": {"seed": 11, "sampling_steps": 13},
        "fusion": {"threshold": 0.6, "max_chain": 4},
    },
}


def _subparsers(parser) -> dict:
    return next(a for a in parser._actions if a.dest == "command").choices


def _deep_merge(base: dict, overlay: dict) -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _run_config(overlay: dict) -> dict:
    """The configuration Snakemake runs with: config.yaml, the small demo, ``overlay``."""
    merged = {k: dict(v) for k, v in SMALL_OVERLAY.items()}
    for key, value in overlay.items():
        merged.setdefault(key, {}).update(value)
    return validate_config(_deep_merge(yaml.safe_load((REPO / "config.yaml").read_text()), merged))


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> dict[str, list[str]]:
    """Configuration name → every ``python -m pipeline`` command ``snakemake -n -p`` plans."""
    commands = {}
    for name, overlay in CONFIGS.items():
        workdir = tmp_path_factory.mktemp(name)
        (workdir / "peer").mkdir()
        result = snakemake(workdir, "-n", "-p", overlay=overlay)
        lines = (result.stdout + result.stderr).splitlines()
        commands[name] = [
            line[line.index("python -m pipeline") :]
            for line in lines
            if "python -m pipeline" in line
        ]
        assert commands[name], name
    return commands


def _argv(command: str) -> list[str]:
    """The arguments of a planned shell command, without its log redirection."""
    words = shlex.split(command.split(" > ")[0])
    assert words[:3] == ["python", "-m", "pipeline"], command
    return words[3:]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_planned_command_parses(planned, config):
    parser = cli._parser()
    for command in planned[config]:
        try:
            parser.parse_args(_argv(command))
        except SystemExit:
            pytest.fail(f"{config}: the parser refuses {command}")


@pytest.mark.parametrize("config", CONFIGS)
def test_every_planned_option_with_a_key_receives_the_configured_value(planned, config):
    """An option that names a config key is given that key's value by its rule (where the
    value is not resolved by the rule: null keys, the device)."""
    run = _run_config(CONFIGS[config])
    parser = cli._parser()
    commands = {c.name: c for c in cli.COMMANDS}
    checked = 0
    for command in planned[config]:
        argv = _argv(command)
        args = parser.parse_args(argv)
        for opt in commands[argv[0]].options:
            if opt.config is None or "*" in opt.config or opt.dest == "device":
                continue
            if not set(opt.flags) & set(argv):
                continue
            section, key = opt.config.split(".")
            if run[section][key] is None:
                continue
            assert getattr(args, opt.dest) == run[section][key], (opt.config, command)
            checked += 1
    assert checked > 20


def test_every_stage_command_is_planned_under_some_config(planned):
    given = {_argv(c)[0] for commands in planned.values() for c in commands}
    stages = {c.name for c in cli.COMMANDS if not c.utility}
    assert stages <= given, stages - given
    utilities = {c.name for c in cli.COMMANDS if c.utility}
    assert not utilities & given, utilities & given


# -- defaults from the schema -------------------------------------------------------


def _schema_default(key: str):
    if "*" in key:
        return cli.config_node(key).get("default")
    section, name = key.split(".")
    return default_config()[section][name]


def _defaults_that_differ(parser) -> list[str]:
    """``command --option: parser default != schema default`` for every option with a key."""
    subparsers = _subparsers(parser)
    differ = []
    for command in cli.COMMANDS:
        actions = {a.dest: a for a in subparsers[command.name]._actions}
        for opt in command.options:
            if opt.config is None:
                continue
            default, expected = actions[opt.dest].default, _schema_default(opt.config)
            if default != expected or type(default) is not type(expected):
                differ.append(f"{command.name} {opt.flags[0]}: {default!r} != {expected!r}")
    return differ


def test_every_option_with_a_key_defaults_to_the_schema_default():
    assert _defaults_that_differ(cli._parser()) == []
    args = cli._parser().parse_args(["tiny-classifiers", "--output", "o", "--frames", "f"])
    assert args.classes == default_config()["models"]["tiny_classifier_classes"] == 64


def test_a_default_other_than_the_schema_default_is_found():
    """The check above can fail: one default changed behind the table's back is named."""
    parser = cli._parser()
    classes = next(
        a for a in _subparsers(parser)["tiny-classifiers"]._actions if a.dest == "classes"
    )
    classes.default = 8
    assert _defaults_that_differ(parser) == ["tiny-classifiers --classes: 8 != 64"]


def test_an_option_with_a_key_cannot_have_a_default_of_its_own():
    wrong = cli.option("--classes", config="models.tiny_classifier_classes", default=8)
    with pytest.raises(ValueError, match="--classes: a default beside config"):
        cli.argument(wrong)


def test_the_schema_gives_type_choices_and_help():
    flags, fields = cli.argument(cli.option("--alternative", config="selection.alternative"))
    assert fields["choices"] == ["two-sided", "greater"]
    assert "selection.alternative" in fields["help"]
    _, fields = cli.argument(cli.option("--candidates", config="keyframes.candidates"))
    assert (fields["type"], fields["nargs"], fields["default"]) == (int, "+", [2, 3])


def test_a_boolean_key_takes_true_or_false_in_any_case(capsys):
    base = ["preprocess", "--subject", "s", "--plan", "{}", "--output", "o"]
    parser = cli._parser()
    assert parser.parse_args(base).accept_tr_mismatch is False
    assert parser.parse_args([*base, "--accept-tr-mismatch", "True"]).accept_tr_mismatch is True
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--accept-tr-mismatch", "yes"])
    assert "expected true or false" in capsys.readouterr().err


def test_bad_json_settings_are_a_one_line_error(tmp_path, capsys):
    argv = ["evaluate-retrieval", "--semantic", "s", "--clip-images", "c"]
    assert cli.main([*argv, "--output", str(tmp_path / "o"), "--settings", "{"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


# -- one definition per option --------------------------------------------------------


def test_options_are_added_in_one_place():
    """``add_argument`` is called once in pipeline/cli.py, by the function that adds a
    table option: no option is written out beside the table."""
    tree = ast.parse(Path(cli.__file__).read_text())
    callers = [
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
    ]
    assert callers == ["_add"]
    assert len(re.findall(r"\badd_argument\(", Path(cli.__file__).read_text())) == 1


def _parameters(target) -> tuple[set[str], bool]:
    """The parameter names of a command's target, and whether it takes ``**kwargs``
    (read from the source: no model library is imported)."""
    if callable(target):
        params = inspect.signature(target).parameters.values()
        names = {p.name for p in params}
        return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    module, name = target.split(":")
    tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    args = function.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return names, args.kwarg is not None


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_option_is_a_keyword_of_the_target(command):
    names, var_keyword = _parameters(command.target)
    keywords = [o.keyword or o.dest for o in command.options]
    assert len(keywords) == len(set(keywords)), keywords
    if not var_keyword:
        assert set(keywords) <= names, set(keywords) - names


def test_parsing_imports_no_model_library():
    code = (
        "import sys\n"
        "from pipeline import cli\n"
        "cli._parser().parse_args(['cache', 'vae', '--output', 'o', '--model', 'm'])\n"
        "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]"


def test_only_a_status_command_sets_the_exit_status():
    """A stage's return value (a dataset, a table) is not an exit status."""
    args = cli._parser().parse_args(["versions"])
    stage = cli.Command("stage", "a stage", lambda **_: {"rows": 1}, ())
    assert stage(args) is None
    checker = cli.Command("check", "a check", lambda **_: 1, (), status=True)
    assert checker(args) == 1
